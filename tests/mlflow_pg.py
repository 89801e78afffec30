"""A shared MLflow for a test: `make mlflow-server` (scripts/mlflow_server.sh: PostgreSQL store, artifacts served over
HTTP) on a free loopback port with a database of its own, stopped and the database dropped at the end.

Needs Debian's postgresql, which the script installs as root (.ci/run does so before the tests)."""

import contextlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from .conftest import ROOT, free_port

SCRIPT = ["bash", str(ROOT / "scripts" / "mlflow_server.sh")]


def postgres_possible() -> bool:
    """Creating a PostgreSQL cluster needs root (or sudo) to run as the postgres user."""
    return os.geteuid() == 0 or shutil.which("sudo") is not None


def psql(port: str, db: str, sql: str) -> str:
    out = subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", f"psql -qAt -p {port} -d {db} -c \"{sql}\""],
                         capture_output=True, text=True, check=True)
    return out.stdout


@contextlib.contextmanager
def mlflow_server(run_dir: Path):
    """Yields (url, PostgreSQL port, database, run_dir) once the server answers; None where PostgreSQL cannot be
    installed here."""
    port, db = free_port(), f"kdistill_test_{secrets.token_hex(4)}"
    env = {**os.environ, "KDISTILL_UI_RUN": str(run_dir), "KDISTILL_MLFLOW_SERVER_PORT": str(port),
           "KDISTILL_PG_DB": db}
    started = subprocess.run(SCRIPT + ["start"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0 and "could not install postgresql" in started.stderr:
        yield None
        return
    assert started.returncode == 0, started.stdout + started.stderr
    # the last line names the server and its database (a first start also says it created the cluster)
    pg_port = started.stdout.split("on 127.0.0.1:")[-1].split(";")[0]
    try:
        yield f"http://127.0.0.1:{port}", pg_port, db, run_dir
    finally:
        subprocess.run(SCRIPT + ["stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", f"dropdb -p {pg_port} --if-exists {db}"],
                       capture_output=True)
