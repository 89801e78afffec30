"""The command-line wrapper every step runs under: one-line errors, torchrun for data-parallel steps, the
stage's params, paths and runtime (precision and threads for this machine), and its MLflow run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import datasets
import numpy as np
import torch

from kdistill import tracking
from kdistill.config import Params, load_params
from kdistill.data.batches import tokenize_task
from kdistill.data.splits import validation_rows
from kdistill.data.task import Task
from kdistill.errors import KdistillError
from kdistill.io import check_dir_target, disk_full_error, is_disk_full
from kdistill.paths import ROOT, Paths, params_file
from kdistill.train import distributed
from kdistill.train.evaluation import predict
from kdistill.train.precision import (
    Runtime,
    cpu_capability,
    resolve_precision,
    resolve_threads,
)
from kdistill.train.selection import paired_bootstrap
from kdistill.train.trainer import default_device
from kdistill.validate import check_all

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


def checkpoint_selection(p: Params, train_dir: Path, tok, precision: str, task: Task) -> dict:
    """How a training stage chooses the state it keeps (Trainer/run_phases keyword arguments): score the validation
    rows of `train_dir` (tokenised with the stage's tokenizer) at each evaluation and apply base.checkpoint_rule
    (kdistill.train.selection); nothing when base.validation_rows is 0 (the last state)."""
    val = validation_rows(datasets.load_from_disk(str(train_dir)), p.base.validation_rows)
    if val is None:
        return {}
    val = tokenize_task(val, tok, p.base.max_seq_len, task.doc_stride)
    gold = task.gold(val)

    def evaluate(obj):
        predictions = task.predictions(predict(obj.student, val, precision=precision), val)
        return task.metrics(predictions, gold), predictions

    from kdistill.data.answers import question_score

    def primary(a, g):  # accuracy without sklearn's checks: the bootstrap calls it two thousand times
        if task.is_span:  # per question, each scored once (cached)
            return float(np.mean([question_score(x, tuple(y), task.metric) for x, y in zip(a, g)]))
        return float(np.mean(a == g)) if task.metric == "accuracy" else task.metrics(a, g)[task.metric]

    return {"eval_fn": evaluate, "select_metric": task.metric, "select_rule": p.base.checkpoint_rule,
            "compare": paired_bootstrap(primary, gold)}


class EvalRows:
    """The eval split tokenised for each model: the teacher's tokens, or a model's own when it carries a tokenizer
    with another vocabulary (a cross-vocabulary student). Each tokenisation is made once."""

    def __init__(self, raw, teacher_dir: Path, max_len: int, doc_stride: int | None = None):
        from transformers import AutoTokenizer

        self.raw, self.max_len, self.stride = raw, max_len, doc_stride
        tok = AutoTokenizer.from_pretrained(teacher_dir)
        self.teacher = tokenize_task(raw, tok, max_len, doc_stride)
        self._by_vocab = {frozenset(tok.get_vocab().items()): self.teacher}

    def for_model(self, model_dir: Path):
        from transformers import AutoTokenizer

        if not any(Path(model_dir).glob("tokenizer*")):
            return self.teacher
        tok = AutoTokenizer.from_pretrained(model_dir)
        key = frozenset(tok.get_vocab().items())
        if key not in self._by_vocab:
            self._by_vocab[key] = tokenize_task(self.raw, tok, self.max_len, self.stride)
        return self._by_vocab[key]


def stage_run(p: Params, stage: str):
    """This stage's MLflow run (kdistill.tracking.stage_run), with what `auto` became on this machine."""
    return tracking.stage_run(p, stage, _runtime)
