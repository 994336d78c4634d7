"""cvrl_tf: Spatiotemporal Contrastive Video Representation Learning (Qian et al., CVPR 2021).

Importing cvrl_tf turns TensorFlow's oneDNN CPU kernels on (TF_ENABLE_ONEDNN_OPTS=1) unless
the variable is already set. TensorFlow enables them by default only on CPUs with AVX-512
VNNI/BF16 or AMX; on AVX2-only CPUs they train the R3D about twice as fast (docs/DEMO.md).
It acts only if cvrl_tf is imported before TensorFlow (as `python -m cvrl_tf.train` and
`python -m cvrl_tf.demo` do); set TF_ENABLE_ONEDNN_OPTS=0 to keep them off.
"""
import os

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# setdefault: a value the user exported, even an empty one, is never overridden.
os.environ.setdefault(ONEDNN_ENV, "1")

__version__ = "0.1.0"
