"""Checks that need more than the schema: the teacher's shape and the data on disk. Run before any long work."""

from __future__ import annotations

from pathlib import Path

from kdistill.config import Params, ParamsError
from kdistill.data.glue import DataError, check_split_available, glue_task
from kdistill.data.splits import resolve_task
from kdistill.data.task import Task
from kdistill.general_start import check_start, start_config
from kdistill.models import ModelSpecError, teacher_config
from kdistill.recipes import RECIPES
from kdistill.schema import params_key
from kdistill.teacher_head import plan


def check_against_teacher(p: Params, teacher_layers: int, teacher_heads: int, teacher_hidden: int,
                          teacher_ffn: int | None = None) -> None:
    """Each recipe's own checks of its params against the teacher's shape (kdistill/recipes/<name>.py)."""
    for name, recipe in RECIPES.items():
        if getattr(p.general_distill, name).from_ is None:  # a student given with `from` has its own shape
            recipe.check_teacher(p, teacher_layers, teacher_heads, teacher_hidden, teacher_ffn)


def check_starts(p: Params, teacher_cfg) -> None:
    """Each general student given with general_distill.<recipe>.from fits the teacher and its recipe."""
    for name in RECIPES:
        src = getattr(p.general_distill, name).from_
        if src is not None:
            with params_key(f"general_distill.{name}.from"):
                check_start(name, start_config(src, p.base.allow_pickle_weights), teacher_cfg, p)


def check_teacher(p: Params, task: Task) -> None:
    try:
        cfg = teacher_config(p.base.teacher, p.base.allow_pickle_weights)
    except (ModelSpecError, OSError) as exc:
        raise ParamsError(f"params.yaml: key 'base.teacher': {exc}") from None
    check_against_teacher(p, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size,
                          getattr(cfg, "intermediate_size", None))
    check_starts(p, cfg)
    plan(cfg, task, p.teacher_finetune.mode, p.base.teacher)  # a head that names other labels: refused now


def check_data(p: Params, root: str | Path = ".") -> Task:
    """The task the params describe, every row of the user's files checked; GLUE presets: the splits exist."""
    corpus = Path(root) / p.prepare.corpus
    if not corpus.is_file():
        raise ParamsError(f"params.yaml: key 'prepare.corpus': {corpus} does not exist (paragraph-per-line text)")
    if p.data.train is not None:
        for key in ("train", "dev", "test"):
            name = getattr(p.data, key)
            if name is not None and not (Path(root) / name).exists():
                raise ParamsError(f"params.yaml: key 'data.{key}': {Path(root) / name} does not exist")
        return resolve_task(p)
    src = p.base.data_dir
    local = Path(root) / src
    if local.is_dir():
        src = str(local)
    elif "/" not in src or src.startswith((".", "/")):  # not a local directory, and not a hub name like glue/sst2
        raise ParamsError(f"params.yaml: key 'base.data_dir': {local} is not a directory (expected a GLUE tsv root)")
    for key, split in (("base.task", "train"), ("base.eval_split", p.base.eval_split)):
        try:
            check_split_available(src, p.base.task, split)
        except DataError as exc:
            raise ParamsError(f"params.yaml: key '{key}': {exc}") from None
    return glue_task(p.base.task)


def check_all(p: Params, root: str | Path = ".") -> None:
    check_teacher(p, check_data(p, root))
