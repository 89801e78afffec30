"""What every step shares: params, output paths, MLflow run and loss logging. No training code here."""

from __future__ import annotations

import contextlib
import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdistill.config import Params, load_params
from kdistill.glue import load_split
from kdistill.validate import check_all

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    """Where each step writes; `KDISTILL_OUTPUTS` moves the whole tree (the smoke profile uses its own)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def augmented(self) -> Path:
        return self.root / "augmented"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def teacher_mlm(self) -> Path:
        """The teacher with an MLM head (fitted when it had none), saved beside the DistilBERT general student."""
        return self.general("distilbert") / "teacher_mlm"

    def general(self, recipe: str) -> Path:
        return self.root / "general" / recipe

    def student(self, recipe: str) -> Path:
        return self.root / "students" / recipe

    def baseline(self, recipe: str) -> Path:
        return self.root / "baselines" / recipe

    @property
    def reports(self) -> Path:
        return self.root.parent / "reports" if self.root.name == "outputs" else self.root / "reports"

    def reports_for(self, stage: str) -> Path:
        """Per-step loss curves (CSV), DVC plots."""
        return self.reports / "losses" / f"{stage}.csv"

    @property
    def work(self) -> Path:
        """Resumable checkpoints: outside the DVC outs, which DVC deletes before re-running a stage."""
        return self.root.parent / "work" / self.root.name


def setup(stage: str) -> tuple[Params, Paths]:
    params_file = Path(os.environ.get("KDISTILL_PARAMS", ROOT / "params.yaml"))
    p = load_params(params_file)
    check_all(p, ROOT)
    torch.set_num_threads(p.base.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    paths = Paths(Path(os.environ.get("KDISTILL_OUTPUTS", ROOT / "outputs")))
    print(f"[{stage}] params {params_file}, outputs {paths.root}", flush=True)
    return p, paths


def data_source(p: Params) -> str:
    local = ROOT / p.base.data_dir
    return str(local) if local.is_dir() else p.base.data_dir


def load_task_splits(p: Params):
    train = load_split(data_source(p), p.base.task, "train")
    if p.base.max_train_examples and len(train) > p.base.max_train_examples:
        train = train.shuffle(seed=p.base.seed).select(range(p.base.max_train_examples))
    return train, load_split(data_source(p), p.base.task, p.base.eval_split)


class LossLog:
    """Trainer callback: every loss component each step to MLflow (`loss/<name>`) and to a CSV for DVC plots."""

    def __init__(self, csv_path: Path, prefix: str = "", flush_every: int = 25):
        self.csv_path = csv_path
        self.prefix = prefix
        self.rows: list[dict] = []
        self.pending: list = []
        self.flush_every = flush_every
        self._t0 = time.time()

    def on_step(self, step, components, total, lr):
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        row = {"step": step, "loss": total, "lr": lr, **components}
        self.rows.append(row)
        for k, v in row.items():
            if k != "step":
                name = f"loss/{self.prefix}{k}" if k not in ("loss", "lr") else f"{self.prefix}{k}"
                self.pending.append(Metric(name, float(v), ts, step))
        if len(self.pending) >= self.flush_every * 4:
            self.flush()

    def on_eval(self, step, metrics):
        import mlflow

        mlflow.log_metrics({f"dev/{self.prefix}{k}": v for k, v in metrics.items()}, step=step)

    def flush(self):
        import mlflow

        run = mlflow.active_run()
        if run and self.pending:
            mlflow.tracking.MlflowClient().log_batch(run.info.run_id, metrics=self.pending)
        self.pending = []

    def write_csv(self):
        self.flush()
        if not self.rows:
            return
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        tmp = self.csv_path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.csv_path)


def tracking_uri(p: Params) -> str:
    uri = p.tracking.mlflow_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{ROOT / uri.removeprefix('sqlite:///')}"
    return os.environ.get("MLFLOW_TRACKING_URI", uri)


def experiment(p: Params):
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(tracking_uri(p))
    name = f"{p.tracking.experiment_prefix}-{p.base.task}"
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=(ROOT / "mlartifacts" / name).as_uri())
    mlflow.set_experiment(name)
    return name


@contextlib.contextmanager
def stage_run(p: Params, stage: str):
    """An MLflow run for this stage, nested under the flow's parent run when the flow passes one."""
    import mlflow

    experiment(p)
    parent = os.environ.get("KDISTILL_PARENT_RUN_ID")
    with mlflow.start_run(run_name=stage, parent_run_id=parent, nested=bool(parent)) as run:
        mlflow.set_tag("stage", stage)
        mlflow.log_params(_flatten(p.model_dump(), stage))
        yield run


def _flatten(d: dict, stage: str, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, stage, key + "."))
        else:
            out[key] = str(v)[:500]
    return out
