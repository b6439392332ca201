"""The installed wheel carries conf/ and the MNIST files, and runs outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_wheel_ships_conf_and_mnist_and_runs_from_site_packages(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("nnopt-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(site)
    assert "nnopt_cli/conf/train.yaml" in names and "nnopt_cli/conf/optimizer/adam.yaml" in names
    assert "nnopt_cli/data/mnist/train-images-idx3-ubyte.gz" in names
    assert "hydra_plugins/nnopt_launcher/fork_launcher.py" in names  # hydra/launcher=parallel
    assert "hydra_plugins/__init__.py" not in names  # a namespace shared with Hydra's own plugins
    # run from an unrelated folder with only the unpacked wheel on the path (no checkout)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", "import nnopt_cli.config as c; print(c.conf_dir())"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(site / "nnopt_cli" / "conf")
    run = subprocess.run([sys.executable, "-m", "nnopt_cli", "train", "--cfg", "job", "optimizer=sgd"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "torch.optim.SGD" in run.stdout, run.stderr
