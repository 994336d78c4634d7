"""cvrl_tf: Spatiotemporal Contrastive Video Representation Learning (Qian et al., CVPR 2021).

Importing cvrl_tf turns TensorFlow's oneDNN CPU kernels on (TF_ENABLE_ONEDNN_OPTS=1) unless
the variable is already set. TensorFlow enables them by default only on CPUs with AVX-512
VNNI/BF16 or AMX; on AVX2-only CPUs they train the R3D much faster (docs/BENCHMARKS.md).
It acts only if cvrl_tf is imported before TensorFlow (as `python -m cvrl_tf.train` and
`python -m cvrl_tf.demo` do); set TF_ENABLE_ONEDNN_OPTS=0 to keep them off.

On Linux with glibc, importing cvrl_tf also has malloc serve blocks up to 32 MB from its heap
and keep up to 64 MB free at the top of it (the limits glibc's own adaptive thresholds end at),
instead of mapping fresh pages for large blocks (above 128 kB at first) and unmapping them: a
video record is about 10 MB at Kinetics sizes, and faulting and zeroing fresh pages for each
record, frame array and clip cost a measurable share of the host pipeline's CPU
(docs/BENCHMARKS.md). This acts whenever cvrl_tf is imported. CVRL_TF_TUNE_MALLOC=0 keeps
glibc's defaults (1, the default, applies these; any other value is refused), and so does
exporting MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or a glibc.malloc setting in
GLIBC_TUNABLES (your choice stands); with another allocator preloaded (tcmalloc, jemalloc) the
setting is unused.
"""
import ctypes
import os
import sys

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# setdefault: a value the user exported, even an empty one, is never overridden.
os.environ.setdefault(ONEDNN_ENV, "1")

TUNE_MALLOC_ENV = "CVRL_TF_TUNE_MALLOC"
MALLOC_ENVS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
MMAP_THRESHOLD = 32 << 20  # glibc's largest adaptive value on 64-bit (its default: 128 kB)
TRIM_THRESHOLD = 64 << 20  # twice that, as glibc's adaptive scheme sets it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def _tune_malloc() -> bool:
    """Sets the two glibc malloc thresholds above; False where the user chose or no glibc."""
    if os.environ.get(TUNE_MALLOC_ENV, "1") not in ("0", "1"):
        raise ValueError(f"{TUNE_MALLOC_ENV} must be 0 (glibc's malloc defaults) or 1 (cvrl_tf's "
                         f"thresholds), got {os.environ[TUNE_MALLOC_ENV]!r}.")
    chosen = (os.environ.get(TUNE_MALLOC_ENV) == "0" or any(k in os.environ for k in MALLOC_ENVS)
              or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""))
    if chosen or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # The process's own C library.
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


MALLOC_TUNED = _tune_malloc()

__version__ = "0.1.0"
