"""Where the project lives and where each step reads and writes: the params file and the outputs tree."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kdistill.config import Params

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    """Where each step writes; `KDISTILL_OUTPUTS` moves the whole tree (the smoke profile uses its own).

    `shared` (KDISTILL_SHARED_OUTPUTS): a study cell (pipelines/study.py) reads the prepared data, the teachers and
    the general students of a finished pipeline there, and writes only its own augmented split and task students.
    """

    root: Path
    shared: Path | None = None
    # KDISTILL_GENERAL_OUTPUTS: a seeds-study variant that changes general distillation writes and reads its own
    # general students there, and everything else as a cell does
    general_root: Path | None = field(default_factory=lambda: _env_path("KDISTILL_GENERAL_OUTPUTS"))
    # KDISTILL_GENERAL_FROM: a profile with the default's teacher, corpus and general params reads the teacher with
    # its MLM head and the general students of the default pipeline there (pipelines/stage_graph.py)
    general_from: Path | None = field(default_factory=lambda: _env_path("KDISTILL_GENERAL_FROM"))

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
        return (self.general_from or self.upstream) / "teacher_mlm"

    def general(self, recipe: str) -> Path:
        return (self.general_root or self.general_from or self.upstream) / "general" / recipe

    def student(self, recipe: str) -> Path:
        return self.root / "students" / recipe

    def baseline(self, recipe: str) -> Path:
        return self.root / "baselines" / recipe

    def init_control(self, recipe: str) -> Path:
        """The teacher-initialised control (task_distill.teacher_init_controls)."""
        return self.root / "init_controls" / recipe

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


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else ROOT / path


def params_file() -> Path:
    path = Path(os.environ.get("KDISTILL_PARAMS", ROOT / "params.yaml"))
    return path if path.is_absolute() else ROOT / path


def data_source(p: Params) -> str:
    local = ROOT / p.base.data_dir
    return str(local) if local.is_dir() else p.base.data_dir
