"""Test set-up: quiet TensorFlow and split the CPU into two logical devices.

Two logical CPUs let MirroredStrategy tests run two replicas on this machine
(see docs/DESIGN.md). This must happen before TensorFlow initializes devices.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # Devices already initialized by an earlier import.
    pass
