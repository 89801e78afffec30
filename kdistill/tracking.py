"""MLflow for every step: the tracking store, the experiment, one run per stage with its params (credentials
redacted), and each loss component per step (plus the CSV that DVC plots)."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import time
from pathlib import Path

from kdistill.config import Params
from kdistill.errors import KdistillError
from kdistill.io import atomic_file
from kdistill.paths import ROOT
from kdistill.train import distributed


class LossLog:
    """Trainer callback: every loss component each step to MLflow (`loss/<name>`), batched to keep SQLite fast."""

    def __init__(self, prefix: str = "", step_offset: int = 0, flush_every: int = 100):
        self.prefix = prefix
        self.offset = step_offset
        self.pending: list = []
        self.flush_every = flush_every

    def on_step(self, step, components, total, lr):
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        step += self.offset
        self.pending.append(Metric(f"{self.prefix}loss", float(total), ts, step))
        self.pending.append(Metric(f"{self.prefix}lr", float(lr), ts, step))
        self.pending.extend(Metric(f"loss/{self.prefix}{k}", float(v), ts, step) for k, v in components.items())
        if len(self.pending) >= self.flush_every:
            self.flush()

    def on_eval(self, step, metrics):
        import mlflow

        self.flush()
        # checkpoint selection scores the validation rows (base.validation_rows); `dev/` is the eval split, scored once
        mlflow.log_metrics({f"val/{self.prefix}{k}": v for k, v in metrics.items()}, step=step + self.offset)

    def flush(self):
        import mlflow

        run = mlflow.active_run()
        if run and self.pending:
            mlflow.tracking.MlflowClient().log_batch(run.info.run_id, metrics=self.pending)
        self.pending = []


class PhaseLogs:
    """run_phases callbacks: one LossLog per phase (its prefix, steps continuing the earlier phases'); flush() at the end."""

    def __init__(self):
        self.logs: list[LossLog] = []

    def __call__(self, phase, offset: int) -> list:
        self.logs.append(LossLog(prefix=phase.prefix, step_offset=offset))
        return self.logs[-1:]

    def flush(self) -> None:
        for log in self.logs:
            log.flush()


def write_loss_csv(path: Path, *histories: list[dict]) -> None:
    """Loss components per step (DVC plots), from the trainer's history, which survives resumes.

    Later histories continue the step numbers of earlier ones (TinyBERT's two task phases)."""
    rows, offset = [], 0
    for hist in histories:
        rows += [{**r, "step": r["step"] + offset} for r in hist]
        offset = rows[-1]["step"] if rows else offset
    path.parent.mkdir(parents=True, exist_ok=True)
    # no steps (a teacher used as it is): the header alone, so the stage's plot output exists
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["step", "loss"]
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def tracking_uri(p: Params) -> str:
    uri = p.tracking.mlflow_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{ROOT / uri.removeprefix('sqlite:///')}"
    return os.environ.get("MLFLOW_TRACKING_URI", uri)


class TrackingUnavailable(KdistillError):
    pass


def check_tracking(p: Params, timeout: float = 5.0) -> None:
    """An MLflow tracking server that does not answer stops the run before any training, in one line."""
    import urllib.error
    import urllib.request

    uri = tracking_uri(p)
    if not uri.startswith(("http://", "https://")):
        return
    shown = uri.split("@")[-1]  # never print credentials embedded in the URI
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            if r.status == 200:
                return
            reason = f"HTTP {r.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except OSError as exc:
        reason = str(getattr(exc, "reason", exc))
    raise TrackingUnavailable(
        f"tracking.mlflow_uri: no MLflow server answers at {shown} ({reason}); start it, or use the embedded "
        "default 'sqlite:///mlflow.db'")


def experiment(p: Params):
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    check_tracking(p)
    mlflow.set_tracking_uri(tracking_uri(p))
    name = f"{p.tracking.experiment_prefix}-{p.base.task}"
    if mlflow.get_experiment_by_name(name) is None:
        # a local store keeps artifacts beside the project; a tracking server stores (and serves) them itself
        local = not tracking_uri(p).startswith(("http://", "https://"))
        mlflow.create_experiment(name, artifact_location=(ROOT / "mlartifacts" / name).as_uri() if local else None)
    mlflow.set_experiment(name)
    return name


@contextlib.contextmanager
def stage_run(p: Params, stage: str, runtime=None):
    """An MLflow run for this stage, nested under the flow's parent run when the flow passes one (rank 0 of a
    data-parallel stage only: the other ranks get None)."""
    import mlflow

    if not distributed.world().main:
        yield None
        return
    experiment(p)
    parent = os.environ.get("KDISTILL_PARENT_RUN_ID")
    with mlflow.start_run(run_name=stage, parent_run_id=parent, nested=bool(parent)) as run:
        mlflow.set_tag("stage", stage)
        mlflow.log_params(_flatten(p.model_dump(), stage))
        if runtime is not None:  # what `auto` became on this machine (a kdistill.train.precision.Runtime)
            mlflow.log_params({f"runtime.{k}": v for k, v in vars(runtime).items()})
        yield run


_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^@/\s]*@")
_SECRET_KEY = re.compile(r"password|passwd|secret|token|api_key|apikey|credential", re.IGNORECASE)


def redact(key: str, value: str) -> str:
    """A params value as it may be shown in MLflow: the password of a URI with credentials
    (postgresql://user:pw@host/db) and the whole value of a key that names a secret become ***."""
    if _SECRET_KEY.search(key.rsplit(".", 1)[-1]):
        return "***"
    return _URI_PASSWORD.sub(r"\g<head>:***@", value)


def _flatten(d: dict, stage: str, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, stage, key + "."))
        else:
            out[key] = redact(key, str(v))[:500]
    return out
