"""`make smoke` end to end: the Prefect flow runs the smoke profile as its own DVC pipeline, stages side by side.

Runs in a copy of the project (a fresh git repo beside the real one, sharing .venv and .assets), so it neither
reads nor touches the developer's outputs, locks or MLflow store.
"""

import json
import os
import sqlite3
import subprocess
import sys

import pytest
import yaml

from .conftest import ROOT


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dst = tmp_path_factory.mktemp("kdistill") / "proj"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if f.startswith("runs/") or not (ROOT / f).is_file():
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        (dst / f).write_bytes((ROOT / f).read_bytes())
    for link in (".venv", ".assets"):
        (dst / link).symlink_to(ROOT / link)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=dst, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dst, check=True)
    subprocess.run(git + ["commit", "-qm", "copy"], cwd=dst, check=True)
    return dst


def _flow(project, *args):
    env = {**os.environ, "PREFECT_HOME": str(project / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "HF_HUB_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("KDISTILL_PARAMS", None)
    env.pop("KDISTILL_OUTPUTS", None)
    return subprocess.run([sys.executable, "-m", "pipelines.flow", *args], cwd=project, env=env, capture_output=True,
                          text=True)


@pytest.mark.slow
def test_smoke_profile_through_prefect_and_dvc(project):
    proc = _flow(project, "--profile", "smoke")
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    out = project / "outputs-smoke"

    # every model evaluated and reported
    summary = json.loads((out / "reports" / "summary.json").read_text())
    recipes = ("tinybert", "distilbert", "mobilebert")
    assert set(summary["models"]) == {"teacher", *recipes, *(f"baseline-{r}" for r in recipes)}
    assert summary["precision"] in ("fp32", "bf16") and summary["cpu_capability"]
    for name, m in summary["models"].items():
        assert m["retention"] == pytest.approx(m["score"] / summary["models"]["teacher"]["score"])
    assert summary["models"]["tinybert"]["params"] < summary["models"]["distilbert"]["params"] < summary["models"]["teacher"]["params"]
    tiny = (out / "reports" / "losses" / "task_distill_tinybert.csv").read_text().splitlines()[0]
    assert all(c in tiny for c in ("emb", "hidn", "attn", "pred"))
    assert "precision" in (out / "reports" / "report.md").read_text()
    assert "precision" in (out / "students" / "tinybert" / "README.md").read_text()
    mobile = (out / "reports" / "losses" / "general_distill_mobilebert.csv").read_text().splitlines()[0].split(",")
    assert {"l1_fmt", "l1_at", "l6_fmt", "l6_at", "mlm", "kd", "fmt", "at"} <= set(mobile)  # per-block curves, then joint
    assert summary["models"]["mobilebert"]["flops_ratio"] < 1

    # every student and the teacher exported; fp32 ONNX passed parity over the whole dev split; int8 measured
    deploy = json.loads((out / "reports" / "deploy.json").read_text())
    assert set(deploy["models"]) == {"teacher", *recipes}
    for name, row in deploy["models"].items():
        assert row["onnx-fp32"]["max_abs_logit_diff"] <= deploy["parity_atol"] and row["onnx-fp32"]["labels_differing"] == 0
        assert "metric_drop" in row["onnx-int8"] and (out / "onnx" / name / "model.int8.onnx").is_file()
    assert {f"{n}/{v}" for n in deploy["models"] for v in ("onnx-fp32", "onnx-int8")} <= set(deploy["timing"]["bs1_seq32"])
    assert set(deploy["speedups"]) == set(recipes)
    assert "ONNX Runtime alone" in (out / "onnx" / "tinybert" / "README.md").read_text()
    assert "onnx-int8" in (out / "reports" / "deploy.md").read_text()

    # independent stages really ran side by side (start/end stamps the flow took around each stage)
    tl = json.loads((project / "work" / "outputs-smoke" / "timeline.json").read_text())["stages"]
    assert len(tl) == 15
    spans = list(tl.items())
    overlaps = [(a, b) for i, (a, x) in enumerate(spans) for b, y in spans[i + 1:]
                if x["start"] < y["end"] and y["start"] < x["end"]]
    assert overlaps, tl
    assert tl["evaluate"]["start"] >= max(v["end"] for k, v in tl.items() if k not in ("evaluate", "export"))
    assert tl["export"]["start"] >= tl["evaluate"]["end"]

    # DVC is the record: the profile's lock holds every stage, and `dvc status` is clean
    lock = yaml.safe_load((project / "runs" / "smoke" / "dvc.lock").read_text())["stages"]
    assert len(lock) == 15
    dvc = str(project / ".venv" / "bin" / "dvc")
    st = subprocess.run([dvc, "status", "--json"], cwd=project, capture_output=True, text=True, check=True).stdout
    assert json.loads(st or "{}") == {} or all(not k.startswith("runs/smoke") for k in json.loads(st))
    st = subprocess.run([dvc, "status", "--json", "runs/smoke/dvc.yaml"], cwd=project, capture_output=True, text=True,
                        check=True).stdout
    assert json.loads(st or "{}") == {}

    # smoke students are registered under their own names, never as versions of the real models
    with sqlite3.connect(project / "mlflow.db") as db:
        names = {r[0] for r in db.execute("select name from registered_models")}
    assert {f"smoke-sst2-{r}" for r in recipes} <= names
    assert not names & {f"sst2-{r}" for r in recipes}
    # the champion is the pyfunc over the registered ONNX variant: text in, labels out
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    preds = mlflow.pyfunc.load_model("models:/smoke-sst2-tinybert@champion").predict(["a good movie", "a dull plot"])
    assert list(preds.columns) == ["label", "probability"] and len(preds) == 2
    assert set(preds["label"]) <= {0, 1}

    # a second run with nothing changed skips every stage on DVC's word, before any Prefect server starts
    again = _flow(project, "--profile", "smoke")
    assert again.returncode == 0 and "every stage is up to date" in again.stdout
    assert "Starting temporary server" not in again.stdout + again.stderr

    # one task-distillation parameter changed: only that stage and evaluate are stale
    prof = project / "profiles" / "smoke.yaml"
    text = prof.read_text()
    changed = text.replace("distilbert:\n    optim: {batch_size: 16, max_steps: 3}", "distilbert:\n    optim: {batch_size: 16, max_steps: 4}")
    assert changed != text
    prof.write_text(changed)
    gen = subprocess.run([sys.executable, "-c", "from pipelines.stage_graph import profile_pipeline; profile_pipeline('smoke')"],
                         cwd=project, capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    st = subprocess.run([dvc, "status", "--json", "runs/smoke/dvc.yaml"], cwd=project, capture_output=True, text=True,
                        check=True).stdout
    assert set(json.loads(st)) == {"runs/smoke/dvc.yaml:task_distill@distilbert"}  # evaluate follows once it re-ran
