"""Sweeps through Hydra's submitit launcher: submitit_local runs the jobs as local processes;
the nnopt Slurm preset (conf/hydra/launcher/slurm.yaml) becomes the sbatch script submitit writes."""

from __future__ import annotations

import json

import pytest
import submitit.slurm.slurm as submitit_slurm
import yaml

from nnopt_cli.sweep.job_dirs import job_dir
from tests.conftest import TINY


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_job_as_a_submitit_job(cli, tmp_path):
    out = cli("train", "-m", "hydra/launcher=submitit_local", *TINY, "optimizer=sgd,adam")
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    for optimizer in ("sgd", "adam"):
        job = sweep / job_dir([*TINY, f"optimizer={optimizer}"], sweep)
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
        assert f"optimizer={optimizer}" in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    # each job ran in a process of its own that submitit started and collected the result of
    results = list((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2 and len({r.parent.name for r in results}) == 2


def test_slurm_preset_becomes_sbatch_directives(monkeypatch, tmp_path):
    """Run the real Slurm launcher up to `sbatch` (absent here) and read the script it wrote."""
    from nnopt_cli.cli.train import run

    # submitit refuses to start without srun on PATH; everything after that check is real
    monkeypatch.setattr(submitit_slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # let the failed sbatch call through, not sys.exit
    with pytest.raises(Exception, match="sbatch"):
        run(["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
             *TINY, "optimizer=sgd,adam"])
    (script,) = tmp_path.rglob(".submission_file_*.sh")
    text = script.read_text()
    for directive in ("--partition=gpu", "--time=30", "--gpus-per-node=1", "--cpus-per-task=8",
                      "--mem=32GB", "--ntasks-per-node=1", "--nodes=1", "--array=0-1%2"):
        assert f"#SBATCH {directive}\n" in text, directive
