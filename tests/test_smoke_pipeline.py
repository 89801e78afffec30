"""The six steps end to end on the smoke profile (a few rows, tiny budgets), into a temporary output tree."""

import json
import os
import subprocess
import sys

import pytest

from pipelines.flow import STAGES

from .conftest import ROOT


@pytest.mark.slow
def test_smoke_profile_runs_all_steps_and_reports_every_model(tmp_path):
    out = tmp_path / "outputs-smoke"
    env = {**os.environ, "KDISTILL_PARAMS": str(ROOT / "profiles" / "smoke.yaml"), "KDISTILL_OUTPUTS": str(out),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "HF_HUB_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
    for stage, module_args in STAGES:
        mod, *args = module_args.split()
        proc = subprocess.run([sys.executable, "-m", f"tasks.{mod}", *args], cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{stage} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    summary = json.loads((out / "reports" / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "tinybert", "distilbert", "baseline-tinybert", "baseline-distilbert"}
    for name, m in summary["models"].items():
        for key in ("task", "metric", "score", "retention", "params", "latency_ms", "size_mb", "speedup"):
            assert key in m, (name, key)
        assert m["retention"] == pytest.approx(m["score"] / summary["models"]["teacher"]["score"])
        assert m["speedup"] == pytest.approx(summary["models"]["teacher"]["latency_ms"]["bs1_seq32_p50"] / m["latency_ms"]["bs1_seq32_p50"])
    assert summary["models"]["tinybert"]["params"] < summary["models"]["distilbert"]["params"] < summary["models"]["teacher"]["params"]
    for stage in ("teacher_finetune", "general_distill_tinybert", "general_distill_distilbert", "task_distill_tinybert", "task_distill_distilbert"):
        header = (out / "reports" / "losses" / f"{stage}.csv").read_text().splitlines()[0].split(",")
        assert "loss" in header, stage
    tiny = (out / "reports" / "losses" / "task_distill_tinybert.csv").read_text().splitlines()[0]
    assert all(c in tiny for c in ("emb", "hidn", "attn", "pred"))
    assert all(c in (out / "reports" / "losses" / "general_distill_distilbert.csv").read_text().splitlines()[0] for c in ("mlm", "ce", "cos"))
    assert (out / "reports" / "score_vs_latency.png").stat().st_size > 1000
    assert "TinyBERT-4 (TinyBERT paper" in (out / "reports" / "report.md").read_text()
