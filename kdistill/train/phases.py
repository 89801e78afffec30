"""A training stage as a sequence of phases (TinyBERT's intermediate-then-prediction, MobileBERT's progressive
transfer), each one Trainer run, resumable across phases.

A finished phase leaves a snapshot of the model it trained (`<work>/<phase>.done.pt`, tied to the phase's
fingerprint); a re-run after an interruption loads the snapshots of finished phases instead of training them
again, and resumes the interrupted phase from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from kdistill.io import atomic_file
from kdistill.train import distributed
from kdistill.train.trainer import Callback, Trainer, TrainerConfig, TrainResult


@dataclass
class Phase:
    """One Trainer run of a stage.

    `prefix` names its loss components in logs (`l3_fmt`); `prepare` runs just before it trains (freezing,
    learning-rate scopes) and after a skipped phase's snapshot is loaded; `setup` runs only when the phase is
    about to train (work a finished phase does not need, such as building a teacher cache); `evaluate` selects
    the best dev state.
    """

    name: str
    objective: nn.Module
    config: TrainerConfig
    prefix: str = ""
    evaluate: bool = False
    prepare: Callable[[], None] | None = None
    setup: Callable[[], None] | None = None


@dataclass
class PhasesResult:
    results: dict[str, TrainResult]
    histories: list[list[dict]]  # per phase, component names prefixed, steps local to the phase

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.results.values())

    @property
    def last(self) -> TrainResult:
        return list(self.results.values())[-1]


def _prefixed(history: list[dict], prefix: str) -> list[dict]:
    if not prefix:
        return history
    return [{k if k in ("step", "lr") else f"{prefix}{k}": v for k, v in row.items()} for row in history]


def run_phases(
    phases: list[Phase],
    dataset,
    work_dir: str | Path,
    model: nn.Module,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    select_metric: str | None = None,
    callbacks: Callable[[Phase, int], list[Callback]] = lambda phase, offset: [],
    device: torch.device | None = None,
    select_rule: str = "best",
    compare: Callable | None = None,
) -> PhasesResult:
    """Train `phases` in order on `dataset`; `model` is the module whose weights the phases hand on to each other.

    `callbacks(phase, step_offset)` gives each phase its callbacks, with the steps of earlier phases as offset so
    that loss curves continue. Snapshots are removed once every phase has finished.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, TrainResult] = {}
    histories: list[list[dict]] = []
    offset = 0
    done_files = []
    for phase in phases:
        if phase.prepare:
            phase.prepare()
        trainer = Trainer(phase.objective, dataset, phase.config, work / phase.name,
                          eval_fn=eval_fn if phase.evaluate else None, select_metric=select_metric if phase.evaluate else None,
                          callbacks=callbacks(phase, offset), fingerprint={"phase": phase.name},
                          select_rule=select_rule, compare=compare,
                          device=device)
        done = work / f"{phase.name}.done.pt"
        done_files.append(done)
        snap = torch.load(done, map_location="cpu", weights_only=False) if done.is_file() else None
        if snap is not None and snap.get("fingerprint") == trainer.fingerprint:
            model.load_state_dict(snap["model"])
            res = snap["result"]
            if distributed.world().main:
                tqdm.write(f"[{phase.config.desc}] already finished ({res.steps} steps): loaded {done}")
        else:
            if phase.setup:
                phase.setup()
            res = trainer.train()
            if distributed.world().main:
                with atomic_file(done) as tmp:  # a snapshot is whole or absent
                    torch.save({"fingerprint": trainer.fingerprint, "model": model.state_dict(), "result": res}, tmp)
        results[phase.name] = res
        histories.append(_prefixed(res.history, phase.prefix))
        offset += res.steps
    distributed.barrier()  # every rank has read the snapshots it needed before rank 0 removes them
    if distributed.world().main:
        for f in done_files:
            f.unlink(missing_ok=True)
    return PhasesResult(results, histories)
