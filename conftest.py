"""pytest loads this before tests/conftest.py, which imports TensorFlow: the suite runs with the
process settings a cvrl_tf command makes (cvrl_tf.runtime.tune_process: oneDNN on, malloc
thresholds), except that TensorFlow's C++ log level stays as tests/conftest.py sets it."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cvrl_tf import runtime  # noqa: E402  (no TensorFlow import)

runtime.tune_process()
