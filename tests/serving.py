"""`make serve` for a test: scripts/serve.py on a free loopback port, waited for until /ping answers, stopped with
SIGTERM at the end (its exit status checked by the caller)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from .conftest import ROOT, free_port


@contextlib.contextmanager
def served(model: str, tracking_uri: str, cwd=ROOT):
    """Yields (process, url) once the registered `model`'s champion answers on loopback."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([sys.executable, str(cwd / "scripts" / "serve.py"), "--model", model, "--port", str(port)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()[-3000:]
                assert time.time() < deadline, "model server did not answer /ping within 300 s"
                time.sleep(1)
        yield proc, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise


def invoke(url: str, inputs: list) -> list[dict]:
    """POST /invocations {"inputs": [...]}: the predictions (an HTTPError for a refused request)."""
    req = urllib.request.Request(f"{url}/invocations", data=json.dumps({"inputs": inputs}).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())["predictions"]


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    """POST /invocations with a raw body: (HTTP status, response text), whatever the status."""
    req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
