"""A real Prefect server on loopback: the pipeline deployment registers with its cron schedule from params.yaml."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kdistill.config import load_params

from .conftest import ROOT, free_port


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect = Path(sys.executable).parent / "prefect"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("Prefect server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
    yield url
    os.killpg(proc.pid, 2)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def test_deployment_is_registered_with_its_cron_schedule(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.schedule import api_healthy, build_deployment

    assert api_healthy(prefect_server)
    p = load_params(ROOT / "params.yaml")
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        dep_id = build_deployment().apply()
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(f"kdistill-pipeline/{p.schedule.deployment}")
            assert dep.id == dep_id
            crons = [s.schedule.cron for s in dep.schedules]
            assert crons == [p.schedule.cron]
            assert all(s.active for s in dep.schedules)
            assert dep.parameters == {"profile": "default"}


def test_a_training_pool_without_a_prefect_server_is_refused_before_anything_starts(tmp_path, monkeypatch):
    """`schedule.training_pool` needs workers on a Prefect server; `make pipeline` (a temporary server of its own,
    no worker) would wait forever for the training stages, so its preflight refuses, naming the key."""
    import pipelines.flow as flow
    from kdistill.errors import KdistillError

    text = (ROOT / "params.yaml").read_text().replace("training_pool: null", "training_pool: gpu")
    assert "training_pool: gpu" in text
    (tmp_path / "params.yaml").write_text(text)
    (tmp_path / "data").symlink_to(ROOT / "data")  # the data checks read the project's files
    monkeypatch.setattr(flow, "ROOT", tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(KdistillError, match=r"params.yaml: key 'schedule.training_pool' \('gpu'\).*make worker POOL=gpu"):
        flow.preflight("default")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    flow.preflight("default")  # with a server named, the flow may send training stages to its workers
