"""A non-editable install carries the gin configs, so --gin_file=experiments/... still works."""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.scenario  # make test-scenarios: pip and a fresh process are the point.
def test_installed_package_resolves_gin_experiments_and_their_includes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(os.path.join(REPO, "setup.py"), src)
    for folder in ("cvrl_tf", "gin"):
        shutil.copytree(os.path.join(REPO, folder), src / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(src)],
                   check=True, cwd=tmp_path, capture_output=True)
    assert (site / "cvrl_tf" / "gin" / "runs" / "pretrain.gin").exists()
    shutil.rmtree(src)  # Only the installed copy is left to find the configs in.
    code = ("from cvrl_tf import train; "
            "train.parse_gin(['experiments/demo_pretrain.gin']); print(train.GIN_DIR)")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env,
                         capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == str(site / "cvrl_tf" / "gin")
