"""Process-wide settings for a cvrl_tf command, made before TensorFlow starts; the user's own
settings always win.

Importing cvrl_tf changes nothing in the process. The commands (`python -m cvrl_tf.train`, the
demo, the converters, ...) call `tune_process()` first, before TensorFlow is imported; library
users may call it too, or not. It makes three settings:
- oneDNN: TF_ENABLE_ONEDNN_OPTS=1 unless the variable is set (even to ''). TensorFlow enables
  its oneDNN CPU kernels by default only on CPUs with AVX-512 VNNI/BF16 or AMX; on AVX2-only
  CPUs they train the R3D much faster (docs/BENCHMARKS.md). TF_ENABLE_ONEDNN_OPTS=0
  keeps them off.
- malloc (Linux with glibc): blocks up to 32 MB come from the heap and up to 64 MB stay free at
  its top (the limits glibc's own adaptive thresholds end at), instead of fresh pages mapped
  and unmapped for every large block: a video record is about 10 MB at Kinetics sizes, and
  faulting and zeroing fresh pages for each record, frame array and clip cost a measurable
  share of the host pipeline's CPU (docs/BENCHMARKS.md). CVRL_TF_TUNE_MALLOC=0 keeps glibc's defaults (1,
  the default, applies these; any other value is refused), and so does exporting
  MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or a glibc.malloc setting in GLIBC_TUNABLES;
  with another allocator preloaded (tcmalloc, jemalloc) the setting is unused.
- quiet: TF_CPP_MIN_LOG_LEVEL=3 unless the variable is set or `verbose`: TensorFlow's C++ log
  lines (start-up banners, a missing CUDA driver, kernel notes) stay off the console. Errors
  still reach the user as Python exceptions, which the commands turn into one sentence.
TensorFlow reads the two variables once, when it loads, so they act only if tune_process runs
before the first `import tensorflow` of the process.
"""
import ctypes
import dataclasses
import os
import sys

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
TUNE_MALLOC_ENV = "CVRL_TF_TUNE_MALLOC"
MALLOC_ENVS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
MMAP_THRESHOLD = 32 << 20  # glibc's largest adaptive value on 64-bit (its default: 128 kB)
TRIM_THRESHOLD = 64 << 20  # twice that, as glibc's adaptive scheme sets it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@dataclasses.dataclass(frozen=True)
class Tuned:
    """What tune_process set (False where the user's choice or the platform kept it)."""
    onednn: bool
    malloc: bool
    quiet: bool


def tune_process(verbose: bool = False) -> Tuned:
    """Makes the settings above; ValueError (one sentence) for a bad CVRL_TF_TUNE_MALLOC."""
    switch = os.environ.get(TUNE_MALLOC_ENV, "1")
    if switch not in ("0", "1"):
        raise ValueError(f"{TUNE_MALLOC_ENV} must be 0 (glibc's malloc defaults) or 1 (cvrl_tf's "
                         f"thresholds), got {switch!r}.")
    onednn = ONEDNN_ENV not in os.environ
    if onednn:
        os.environ[ONEDNN_ENV] = "1"
    quiet = not verbose and LOG_LEVEL_ENV not in os.environ
    if quiet:
        os.environ[LOG_LEVEL_ENV] = "3"
    return Tuned(onednn=onednn, malloc=_tune_malloc(switch), quiet=quiet)


def _tune_malloc(switch: str) -> bool:
    """Sets the two glibc malloc thresholds; False where the user chose or there is no glibc."""
    chosen = (switch == "0" or any(k in os.environ for k in MALLOC_ENVS)
              or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""))
    if chosen or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # The process's own C library.
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
