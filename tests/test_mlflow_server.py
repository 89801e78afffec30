"""A shared MLflow: `make mlflow-server` (PostgreSQL store, artifacts served over HTTP), and the smoke pipeline
pointed at it with `tracking.mlflow_uri: http://127.0.0.1:<port>`: a training stage tracked, every student
registered and aliased through it. It starts from a copy of the suite's finished smoke run (conftest.smoke_run):
the new URI makes evaluate and export stale, and one task-distillation stage is made to run again.

Needs Debian's postgresql (scripts/mlflow_server.sh installs it as root; .ci/run does so before the tests)."""

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from kdistill.recipes import RECIPES

from .conftest import ROOT, flow_env, free_port
from .listening import listening_addresses

SCRIPT = ["bash", str(ROOT / "scripts" / "mlflow_server.sh")]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and shutil.which("sudo") is None,
    reason="creating a PostgreSQL cluster needs root (or sudo) to run as the postgres user")


def _psql(port: str, db: str, sql: str) -> str:
    out = subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", f"psql -qAt -p {port} -d {db} -c \"{sql}\""],
                         capture_output=True, text=True, check=True)
    return out.stdout


@pytest.fixture
def mlflow_server(tmp_path):
    port, db = free_port(), f"kdistill_test_{secrets.token_hex(4)}"
    env = {**os.environ, "KDISTILL_UI_RUN": str(tmp_path / "run"), "KDISTILL_MLFLOW_SERVER_PORT": str(port),
           "KDISTILL_PG_DB": db}
    started = subprocess.run(SCRIPT + ["start"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0 and "could not install postgresql" in started.stderr:
        pytest.skip(f"PostgreSQL not available here: {started.stderr.strip()}")
    assert started.returncode == 0, started.stdout + started.stderr
    # the last line names the server and its database (a first start also says it created the cluster)
    pg_port = started.stdout.split("on 127.0.0.1:")[-1].split(";")[0]
    try:
        yield f"http://127.0.0.1:{port}", pg_port, db, tmp_path / "run"
    finally:
        subprocess.run(SCRIPT + ["stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", f"dropdb -p {pg_port} --if-exists {db}"],
                       capture_output=True)


@pytest.mark.slow
def test_the_smoke_profile_tracks_registers_and_aliases_over_http_on_postgresql(mlflow_server, smoke_pristine, smoke_run,
                                                                                  tmp_path):
    url, pg_port, db, run_dir = mlflow_server
    # the tracking server and PostgreSQL listen on loopback only
    server_pid = int((run_dir / "mlflow-server.pid").read_text())
    assert {ip for ip, _ in listening_addresses(server_pid)} == {"127.0.0.1"}
    assert _psql(pg_port, db, "SHOW listen_addresses").strip() == "127.0.0.1"
    assert (run_dir / "mlflow-server.log").read_text().count("postgresql://") == 0  # the password is not logged

    assert smoke_run[0].returncode == 0, "the shared smoke run failed: see tests/test_smoke_pipeline.py"
    project = tmp_path / "proj"
    subprocess.run(["cp", "-a", str(smoke_pristine), str(project)], check=True)
    (project / "mlflow.db").unlink()  # the shared run's local store: this one must track over HTTP only
    shutil.rmtree(project / "outputs-smoke" / "students" / "tinybert")  # a training stage runs again, over HTTP
    prof = project / "profiles" / "smoke.yaml"
    text = prof.read_text()
    assert "tracking: {experiment_prefix: kdistill-smoke, registry_prefix: smoke-}" in text
    prof.write_text(text.replace("registry_prefix: smoke-}", f"registry_prefix: smoke-, mlflow_uri: '{url}'}}"))
    env = flow_env(project)
    proc = subprocess.run([sys.executable, "-m", "pipelines.flow", "--profile", "smoke"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert not (project / "mlflow.db").exists()  # nothing went to a local store
    ran = json.loads((project / "work" / "outputs-smoke" / "timeline.json").read_text())["stages"]
    assert {"task_distill@tinybert", "evaluate", "export"} <= set(ran) and "teacher_finetune" not in ran

    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    names = {m.name for m in client.search_registered_models()}
    recipes = tuple(RECIPES)
    assert {f"smoke-sst2-{r}" for r in recipes} <= names
    for r in recipes:
        champion = client.get_model_version_by_alias(f"smoke-sst2-{r}", "champion")
        assert champion.tags["variant"].startswith("onnx-")
    exp = client.get_experiment_by_name("kdistill-smoke-sst2")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName = 'task_distill@tinybert'")
    assert runs and {"loss/emb", "loss/hidn", "loss/attn", "loss/pred"} <= set(runs[0].data.metrics)
    assert client.get_metric_history(runs[0].info.run_id, "loss/pred")  # every step on record, over HTTP
    # artifacts went through the server (mlflow-artifacts:/), into its folder
    assert runs[0].info.artifact_uri.startswith("mlflow-artifacts:/")
    assert any((run_dir / "mlflow-artifacts").rglob("model.onnx"))
    # the store really is PostgreSQL
    in_pg = set(_psql(pg_port, db, "SELECT name FROM registered_models").split())
    assert {f"smoke-sst2-{r}" for r in recipes} <= in_pg
    assert _psql(pg_port, db, "SELECT count(*) FROM runs WHERE status = 'RUNNING'").strip() == "0"
    # the champion serves from the registry over HTTP
    mlflow.set_tracking_uri(url)
    preds = mlflow.pyfunc.load_model("models:/smoke-sst2-tinybert@champion").predict(["a good movie", "a dull plot"])
    assert list(preds.columns) == ["label", "probability"] and len(preds) == 2
    json.dumps(preds.to_dict())  # plain values
