"""cvrl_tf: Spatiotemporal Contrastive Video Representation Learning (Qian et al., CVPR 2021).

Importing cvrl_tf or any of its modules changes nothing in the process. The commands
(`python -m cvrl_tf.train`, ...) first call `cvrl_tf.runtime.tune_process()`, which turns
oneDNN on, tunes glibc's malloc for large records and quiets TensorFlow's C++ log, each unless
the user chose otherwise; library users may call it too, before importing TensorFlow.
"""
__version__ = "0.1.0"
