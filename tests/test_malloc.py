"""cvrl_tf.runtime.tune_process keeps glibc's malloc from mapping fresh pages for every large
block; importing cvrl_tf alone changes nothing, neither malloc nor an environment variable.

The input pipeline allocates blocks of megabytes per record (the record, its frames, the clips)
and frees them soon after, several alive at a time. With glibc's defaults those blocks come from
fresh pages (and go back to the kernel when freed), and each page faults and is zeroed on
first touch. The probe below repeats that pattern with the C library's own malloc (NumPy's
allocations would ask for huge pages and hide it) in a fresh interpreter and counts the minor
page faults of the repetitions.
"""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROBE = """
import ctypes, resource, sys
if sys.argv[1] == "tune":
    from cvrl_tf import runtime
    print(runtime.tune_process().malloc)
elif sys.argv[1] == "import":  # every module of the package, nothing called
    # The libraries cvrl_tf imports come first (TensorFlow itself sets TF2_BEHAVIOR and more);
    # then the environment variables the package's modules change are printed.
    import ast, importlib, os, pathlib, pkgutil, cvrl_tf
    third_party = set()
    for path in pathlib.Path(cvrl_tf.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and not node.level else [])
            third_party |= {n.split(".")[0] for n in names}
    for name in sorted(third_party - set(sys.stdlib_module_names) - {"cvrl_tf"}):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    before = dict(os.environ)
    for module in pkgutil.walk_packages(cvrl_tf.__path__, "cvrl_tf."):
        importlib.import_module(module.name)
    print(sorted(set(os.environ.items()) ^ set(before.items())))
else:
    print(None)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 8 << 20  # About one Kinetics-size record.

def records():  # Four alive at once, then all freed, as a pipeline's buffers are.
    blocks = [libc.malloc(SIZE) for _ in range(4)]
    for b in blocks:
        ctypes.memset(b, 1, SIZE)
    for b in blocks:
        libc.free(b)

records()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    records()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 10 * 4 * (8 << 20) // 4096  # Every page of every block, if each faulted.


def _probe(mode: str, **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")
           and k not in ("GLIBC_TUNABLES", "CVRL_TF_TUNE_MALLOC")}
    env.update(PYTHONPATH=REPO, **env_extra)
    return subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=REPO, env=env,
                          capture_output=True, text=True)


def _faults(mode: str, **env_extra) -> tuple:
    run = _probe(mode, **env_extra)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    return lines[-2], int(lines[-1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc's malloc thresholds exist on Linux only")


def test_tune_process_reuses_freed_blocks_instead_of_faulting_fresh_pages():
    tuned, tuned_faults = _faults("tune")
    _, plain_faults = _faults("plain")
    assert tuned == "True"
    assert plain_faults > PAGES // 2  # glibc's defaults: most pages fault again each time.
    assert tuned_faults < PAGES // 50


def test_importing_every_module_changes_neither_the_environment_nor_malloc():
    changed, faults = _faults("import")
    assert changed == "[]", f"importing cvrl_tf's modules changed environment variables: {changed}"
    assert faults > PAGES // 2  # glibc's defaults: most pages fault again each time.


@pytest.mark.parametrize("env", [{"CVRL_TF_TUNE_MALLOC": "0"},
                                 {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"MALLOC_MMAP_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_tune_process_keeps_the_users_malloc_settings(env):
    tuned, faults = _faults("tune", **env)
    assert tuned == "False"
    assert faults > PAGES // 2


def test_a_bad_value_of_the_switch_is_refused_in_one_sentence():
    run = _probe("tune", CVRL_TF_TUNE_MALLOC="off")
    assert run.returncode != 0
    assert ("ValueError: CVRL_TF_TUNE_MALLOC must be 0 (glibc's malloc defaults) or 1 "
            "(cvrl_tf's thresholds), got 'off'.") in run.stderr


def test_a_command_refuses_a_bad_switch_in_one_sentence_without_a_traceback():
    env = {k: v for k, v in os.environ.items() if k != "CVRL_TF_TUNE_MALLOC"}
    env.update(PYTHONPATH=REPO, CVRL_TF_TUNE_MALLOC="off")
    run = subprocess.run([sys.executable, "-m", "cvrl_tf.train", "--gin_file=x.gin"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip() == ("Error: CVRL_TF_TUNE_MALLOC must be 0 (glibc's malloc "
                                  "defaults) or 1 (cvrl_tf's thresholds), got 'off'.")
