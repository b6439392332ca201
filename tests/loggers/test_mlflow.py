"""logger=mlflow (an optional extra): the numbers read back with MLflow's own client; without the
package, one line naming the pip command."""

from __future__ import annotations

import builtins
import json

import pytest

from nnopt_cli.errors import NnoptError
from nnopt_cli.loggers.mlflow import INSTALL_HINT, MLflowLogger
from nnopt_cli.store import layout
from tests.conftest import compose_cfg
from tests.loggers.test_tensorboard import hydra_files


def test_missing_mlflow_is_one_line_naming_the_pip_command(monkeypatch):
    real_import = builtins.__import__

    def no_mlflow(name, *args, **kw):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(NnoptError) as e:
        MLflowLogger()
    assert str(e.value) == INSTALL_HINT and "pip install mlflow" in str(e.value) and "\n" not in str(e.value)


def test_a_run_reads_back_from_the_mlflow_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from nnopt_cli.run.recipe import RunContext, train

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store without a database package
    uri = (tmp_path / "mlruns").as_uri()
    cfg = compose_cfg("logger=[csv,mlflow]", f"logger.mlflow.tracking_uri={uri}", "epochs=2", "name=base",
                      "tags=[paper]")
    run_dir = tmp_path / "run"
    hydra_files(run_dir, {"optimizer": "adam"}, ["name=base"])
    summary = train(cfg, RunContext(run_dir=run_dir, live_progress=False))
    rows = [json.loads(r) for r in (run_dir / layout.METRICS).read_text().splitlines()]

    client = MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("nnopt").experiment_id])
    assert found.info.run_name == "base" and found.info.status == "FINISHED"
    assert found.data.tags["nnopt.run_dir"] == str(run_dir) and "tag.paper" in found.data.tags
    assert found.data.params["optimizer"] == "adam" and found.data.params["name"] == "base"
    history = client.get_metric_history(found.info.run_id, "val/acc")
    assert sorted((m.step, m.value) for m in history) == [(r["total_steps"], r["val/acc"]) for r in rows]
    assert found.data.metrics["test/acc"] == summary["test/acc"]
    assert (run_dir / layout.METRICS_CSV).is_file()  # with the other logger chosen beside it
