"""What every step shares: params, output paths, MLflow run and loss logging. No training code here."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from kdistill import distributed
from kdistill.config import Params, load_params
from kdistill.errors import KdistillError
from kdistill.glue import load_split
from kdistill.io import atomic_file, check_dir_target, disk_full_error, is_disk_full
from kdistill.precision import Runtime, cpu_capability, resolve_precision, resolve_threads
from kdistill.trainer import default_device
from kdistill.validate import check_all

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    """Where each step writes; `KDISTILL_OUTPUTS` moves the whole tree (the smoke profile uses its own).

    `shared` (KDISTILL_SHARED_OUTPUTS): a study cell (pipelines/study.py) reads the prepared data, the teachers and
    the general students of a finished pipeline there, and writes only its own augmented split and task students.
    """

    root: Path
    shared: Path | None = None

    @property
    def upstream(self) -> Path:
        return self.shared or self.root

    @property
    def data(self) -> Path:
        return self.upstream / "data"

    @property
    def augmented(self) -> Path:
        return self.root / "augmented"

    @property
    def teacher(self) -> Path:
        return self.upstream / "teacher"

    @property
    def teacher_mlm(self) -> Path:
        """The teacher with an MLM head (fitted when it had none): stage teacher_mlm."""
        return self.upstream / "teacher_mlm"

    def general(self, recipe: str) -> Path:
        return self.upstream / "general" / recipe

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


_runtime: Runtime | None = None


def cli(main, *args, parallel: bool = False) -> None:
    """Run a step: a deliberate error (bad params, data, model spec, ...) ends it with one line and exit status 2.

    KDISTILL_DEBUG=1 shows the traceback; unexpected exceptions always keep theirs. A training step
    (`parallel=True`) whose resolved process count (base.nproc, or KDISTILL_NPROC) is above 1 starts itself again
    under torchrun, after the params and inputs have been checked here once.
    """
    try:
        if parallel and "WORLD_SIZE" not in os.environ:
            p = load_params(params_file())
            check_all(p, ROOT)
            n = resolve_nproc(p.base.nproc)
            if n > 1:
                sys.exit(_torchrun(n))
        main(*args)
    except Exception as exc:
        if os.environ.get("KDISTILL_DEBUG") == "1":
            raise
        if not isinstance(exc, KdistillError):
            if not is_disk_full(exc):
                raise
            # a write outside the atomic helpers (MLflow's store, a log): still one line, naming the file if known
            exc = disk_full_error(getattr(exc, "filename", None) or os.environ.get("KDISTILL_OUTPUTS", ROOT / "outputs"))
        if "KDISTILL_ERROR_FILE" in os.environ:  # a torchrun rank: the launcher repeats the first error, last
            with open(os.environ["KDISTILL_ERROR_FILE"], "a") as f:
                f.write(f"{exc}\n")
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def resolve_nproc(spec: int | str) -> int:
    """Processes per training stage: KDISTILL_NPROC (`make pipeline NPROC=2`) over base.nproc; `auto` is one per
    CUDA device, else 1 (on a CPU one process with every core is as fast as several sharing them)."""
    spec = os.environ.get("KDISTILL_NPROC") or spec
    if spec == "auto":
        return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    try:
        n = int(spec)
    except ValueError:
        n = 0
    if n < 1:
        raise KdistillError(f"KDISTILL_NPROC / base.nproc: {spec!r} is not a process count; use a whole number >= 1 or auto")
    return n


def _torchrun(n: int) -> int:
    """This step again as `torchrun --standalone --nproc-per-node n -m <module> <args>`; its exit status.

    torchrun stops every rank when one fails or is killed; the step's checkpoints make the next run resume."""
    module = sys.modules["__main__"].__spec__.name
    with tempfile.NamedTemporaryFile("r", prefix="kdistill-rank-errors-", suffix=".txt") as errors:
        env = {**os.environ, "KDISTILL_ERROR_FILE": errors.name, "KDISTILL_PREFLIGHT_DONE": "1",
               # each rank sets its own thread count (setup); this only keeps torchrun from warning about it
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "--max-restarts=0", "-m", module, *sys.argv[1:]]
        print(f"[{module}] data-parallel: {n} processes (torchrun, "
              f"{'nccl' if torch.cuda.is_available() else 'gloo'})", flush=True)
        rc = subprocess.run(cmd, env=env).returncode
        said = errors.read().splitlines()
    if rc == 0:
        return 0
    if said:
        raise KdistillError(said[0])
    raise KdistillError(f"{module}: a training process failed or was killed (torchrun exit {rc}); running the step "
                        "again resumes every process from the last checkpoint")


def precision_for(p: Params, spec: str | None = None) -> str:
    """A stage's precision resolved for this machine: its own setting when given, else base.precision."""
    return resolve_precision(spec or p.base.precision, default_device())


def runtime() -> Runtime:
    assert _runtime is not None, "tasks.common.setup() first"
    return _runtime


def params_file() -> Path:
    path = Path(os.environ.get("KDISTILL_PARAMS", ROOT / "params.yaml"))
    return path if path.is_absolute() else ROOT / path


def setup(stage: str) -> tuple[Params, Paths]:
    global _runtime
    world = distributed.init_from_env()
    p = load_params(params_file())
    if os.environ.get("KDISTILL_PREFLIGHT_DONE") != "1":  # the torchrun launcher checked them once for every rank
        check_all(p, ROOT)
    threads = resolve_threads(p.base.threads)
    torch.set_num_threads(threads)
    _runtime = Runtime(str(default_device()), precision_for(p), threads, cpu_capability(), world.size)
    # new heads (classifier, fitted MLM head) start from seeded weights: reruns agree and checkpoints match their run
    torch.manual_seed(p.base.seed)
    # datasets writes cache files beside the data it maps; our inputs are DVC outputs that must stay untouched
    datasets.disable_caching()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(os.environ.get("KDISTILL_OUTPUTS", ROOT / "outputs"))
    shared = os.environ.get("KDISTILL_SHARED_OUTPUTS")
    paths = Paths(out if out.is_absolute() else ROOT / out,
                  None if not shared else Path(shared) if Path(shared).is_absolute() else ROOT / shared)
    check_dir_target(paths.root)
    if world.main:
        print(f"[{stage}] params {params_file()}, outputs {paths.root}", flush=True)
        print(f"[{stage}] {_runtime.describe()}", flush=True)
    return p, paths


def data_source(p: Params) -> str:
    local = ROOT / p.base.data_dir
    return str(local) if local.is_dir() else p.base.data_dir


def load_task_splits(p: Params):
    """The train split shuffled once with the seed (so any prefix is a random subset) and the eval split."""
    train = load_split(data_source(p), p.base.task, "train").shuffle(seed=p.base.seed, keep_in_memory=True)
    return train.flatten_indices(keep_in_memory=True), load_split(data_source(p), p.base.task, p.base.eval_split)


def first(ds, n: int | None, holdout: int = 0, source: str = "the train split"):
    """The first n rows (all when n is None) of those before the last `holdout` rows (the validation rows, see
    `validation_rows`): a random subset, as prepare shuffled the split."""
    usable = len(ds) - holdout
    if usable < 1:
        raise KdistillError(f"base.validation_rows: {holdout} leaves no training rows in {source} ({len(ds)} rows); "
                            f"use fewer (0: no checkpoint selection, the last state is kept)")
    n = usable if n is None else min(n, usable)
    return ds if n == len(ds) else ds.select(range(n))


def validation_rows(ds, rows: int):
    """The last `rows` rows of the (shuffled) train split, which no stage trains on (`first` leaves them out):
    training stages select their best checkpoint on them, so the eval split is scored once, never chosen on. None
    when rows is 0 (no selection)."""
    if rows == 0:
        return None
    if rows >= len(ds):  # first() names the problem first in every stage; this is the same check for direct callers
        raise KdistillError(f"base.validation_rows: {rows} is not less than the {len(ds)} rows of the train split")
    return ds.select(range(len(ds) - rows, len(ds)))


def checkpoint_selection(p: Params, train_dir: Path, tok, precision: str):
    """(eval_fn, select_metric) for a training stage: score the validation rows of `train_dir` (tokenised with the
    stage's tokenizer) and keep the best state; (None, None) when base.validation_rows is 0 (keep the last state)."""
    from datasets import load_from_disk

    from kdistill.data import tokenize_task
    from kdistill.evaluation import score
    from kdistill.glue import get_task

    val = validation_rows(load_from_disk(str(train_dir)), p.base.validation_rows)
    if val is None:
        return None, None
    val = tokenize_task(val, tok, p.base.task, p.base.max_seq_len)
    return (lambda obj: score(obj.student, val, p.base.task, precision)), get_task(p.base.task).metric


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
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
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
def stage_run(p: Params, stage: str):
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
        if _runtime is not None:  # what `auto` became on this machine
            mlflow.log_params({f"runtime.{k}": v for k, v in vars(_runtime).items()})
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
