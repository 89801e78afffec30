"""make serve MODEL=sst2-tinybert [PORT=5001] [ALIAS=champion]: MLflow's own model server for a registered student.

Resolves models:/<MODEL>@<ALIAS> in the project's tracking store (tracking.mlflow_uri) and runs
`mlflow models serve` on 127.0.0.1 in this environment (--env-manager local: no download, no new virtualenv).
The registered model is the export stage's pyfunc over ONNX Runtime: POST /invocations with
{"inputs": ["a good movie", ...]} or {"dataframe_records": [{"text": "..."}]}; GET /ping answers when it is ready.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="registered name, e.g. sst2-tinybert")
    ap.add_argument("--alias", default="champion")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--params", default=os.environ.get("KDISTILL_PARAMS", str(ROOT / "params.yaml")))
    a = ap.parse_args()

    import mlflow
    from mlflow import MlflowClient

    from kdistill.config import load_params
    from kdistill.errors import KdistillError
    from kdistill.tracking import tracking_uri

    try:
        p = load_params(a.params)
        uri = tracking_uri(p)
        mlflow.set_tracking_uri(uri)
        try:
            v = MlflowClient().get_model_version_by_alias(a.model, a.alias)
        except Exception as exc:  # noqa: BLE001 - MLflow raises its own RestException subclasses
            names = ", ".join(f"{p.tracking.registry_prefix}{p.base.task}-{r}" for r in p.base.recipes)
            raise KdistillError(f"models:/{a.model}@{a.alias} not found in {uri.split('@')[-1]} ({type(exc).__name__}); "
                                f"run `make pipeline` first, or name a registered model ({names})") from None
    except KdistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serve: models:/{a.model}@{a.alias} = version {v.version} ({v.tags.get('variant', '?')}) on "
          f"http://{a.host}:{a.port}/invocations", flush=True)
    # MLflow execs `uvicorn` by name: the one installed beside this interpreter
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{a.model}@{a.alias}", "--env-manager",
           "local", "--host", a.host, "--port", str(a.port), "--workers", str(a.workers)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
        os.killpg(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rc = proc.wait()
    if stopping and rc in (0, -signal.SIGTERM):
        print("serve: stopped", flush=True)
        return 0  # asked to stop, and the server did: a clean shutdown
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main())
