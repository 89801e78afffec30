"""The two UIs the product is used through, checked in a real browser (headless Debian Chromium via Playwright).

Servers are started the way users start them (`scripts/ui.sh start` = `make ui`, `python -m pipelines.schedule` =
`make schedule`), on free loopback ports, over a throw-away MLflow store holding two registered students with the
`champion` alias and a run with per-component loss metrics. Skipped, with the reason, where Chromium is missing.
"""

import importlib.util
import os
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

from kdistill.config import Params, load_params
from kdistill.deploy.onnx_export import export_onnx

from .conftest import ROOT, free_port
from .listening import listening_addresses

spec = importlib.util.spec_from_file_location("ui_check", ROOT / "scripts" / "ui_check.py")
ui_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ui_check)

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - requirements.txt pins it
    sync_playwright = None

pytestmark = pytest.mark.skipif(
    sync_playwright is None or ui_check.find_chromium() is None,
    reason="needs Playwright and Debian's chromium (make setup installs both; apt-get failed or is missing here)")


def _wait(url: str, proc=None, seconds: int = 180) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=3).read()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{proc.args} exited with {proc.returncode} before {url} answered")
            assert time.time() < deadline, f"{url} did not answer within {seconds} s"
            time.sleep(1)


def _store(tmp_path, make_bert, tiny_tokenizer):
    """Two registered students with the champion alias and a task-distillation run with its loss components."""
    from kdistill.data.glue import glue_task
    from kdistill.tracking import LossLog
    from tasks.export import register

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    p = Params.model_validate({"base": {"max_seq_len": 16}})
    mlflow.set_experiment("kdistill-ui-test")
    for recipe, seed in (("tinybert", 0), ("distilbert", 1)):
        out = tmp_path / "onnx" / recipe
        out.mkdir(parents=True)
        export_onnx(make_bert(vocab=len(tiny_tokenizer), seed=seed), out / "model.onnx")
        tiny_tokenizer.save_pretrained(out / "tokenizer")
        with mlflow.start_run(run_name=f"register-{recipe}"):
            register(p, recipe, out, "onnx-fp32", {"onnx-fp32": {"metrics": {"accuracy": 0.7}}}, glue_task("sst2"),
                     "# card")
    with mlflow.start_run(run_name="task_distill@tinybert") as run:
        log = LossLog(flush_every=10)
        for step in range(1, 31):
            log.on_step(step, {"emb": 1 / step, "hidn": 2 / step, "attn": 3 / step, "pred": 0.5 / step}, 6.5 / step, 1e-4)
        log.flush()
    mlflow.set_tracking_uri("")
    return uri, run.info.experiment_id, run.info.run_id, [f"{p.base.task}-tinybert", f"{p.base.task}-distilbert"]


@pytest.mark.slow
def test_prefect_and_mlflow_uis_show_the_deployment_the_champions_and_the_loss_charts(tmp_path, make_bert,
                                                                                      tiny_tokenizer):
    uri, exp_id, run_id, models = _store(tmp_path, make_bert, tiny_tokenizer)
    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true", "KDISTILL_UI_RUN": str(tmp_path / "run"),
           "KDISTILL_PREFECT_PORT": str(prefect_port), "KDISTILL_MLFLOW_PORT": str(mlflow_port),
           "KDISTILL_MLFLOW_STORE": uri}
    for k in ("PREFECT_API_URL", "PREFECT_UI_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    ui = ["bash", str(ROOT / "scripts" / "ui.sh")]
    try:
        started = subprocess.run(ui + ["start"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        # both UIs listen on loopback only, every socket of their process trees
        for name in ("prefect", "mlflow"):
            pid = int((tmp_path / "run" / f"{name}.pid").read_text())
            addrs = listening_addresses(pid)
            assert addrs and {ip for ip, _ in addrs} == {"127.0.0.1"}, (name, addrs)

        api = f"http://127.0.0.1:{prefect_port}/api"
        # as `make schedule` runs it: no PREFECT_API_URL, the server of `make ui` (its port) by default
        dep = subprocess.run([sys.executable, "-m", "pipelines.schedule"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
        assert dep.returncode == 0, dep.stdout + dep.stderr
        assert f"on {api}" in dep.stdout and "temporary server" not in dep.stdout + dep.stderr  # the UI's own server
        p = load_params(ROOT / "params.yaml")
        assert _deployment_exists(api, p.schedule.deployment)

        shots = tmp_path / "shots"
        shots.mkdir()
        with sync_playwright() as pw:
            browser = ui_check.launch(pw)
            page = browser.new_page(viewport=ui_check.VIEWPORT)
            ui_check.check_prefect(page, f"http://127.0.0.1:{prefect_port}", p.schedule.deployment,
                                   "kdistill-pipeline", p.schedule.cron, shots)
            ui_check.check_mlflow_registry(page, f"http://127.0.0.1:{mlflow_port}", models, shot=shots)
            ui_check.check_mlflow_run(page, f"http://127.0.0.1:{mlflow_port}", exp_id, run_id,
                                      "task_distill@tinybert", ["attn", "emb", "hidn", "pred"], shots)
            browser.close()
        assert {f.name for f in shots.iterdir()} == {"prefect-deployments.png", "prefect-deployment.png",
                                                     "mlflow-models.png", "mlflow-run-losses.png"}
    finally:
        subprocess.run(ui + ["stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _deployment_exists(api: str, name: str) -> bool:
    import json

    req = urllib.request.Request(f"{api}/deployments/filter", data=json.dumps({"limit": 10}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return any(d["name"] == name for d in json.loads(r.read()))
    except OSError:
        return False
