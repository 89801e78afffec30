"""Checks that need more than the schema: the teacher's shape and the data on disk. Run before any long work."""

from __future__ import annotations

from pathlib import Path

from kdistill.config import Params, ParamsError
from kdistill.data.glue import DataError, check_split_available
from kdistill.distill.layer_map import LayerMapError, check_heads, resolve_layer_map
from kdistill.models import ModelSpecError, teacher_config


def _check_heads(key: str, student_heads: int, teacher_heads: int) -> None:
    try:
        check_heads(student_heads, teacher_heads)
    except LayerMapError as exc:
        raise ParamsError(f"params.yaml: key '{key}': {exc}") from None


def check_against_teacher(p: Params, teacher_layers: int, teacher_heads: int, teacher_hidden: int) -> None:
    tb = p.general_distill.tinybert
    try:
        resolve_layer_map(tb.layer_map, tb.student.layers, teacher_layers)
    except LayerMapError as exc:
        raise ParamsError(f"params.yaml: key 'general_distill.tinybert.layer_map': {exc}") from None
    if tb.weights.get("attn", 0) > 0 or p.task_distill.tinybert.weights.get("attn", 0) > 0:
        _check_heads("general_distill.tinybert.student.heads", tb.student.heads, teacher_heads)
    mb = p.general_distill.mobilebert.student
    _check_heads("general_distill.mobilebert.student.heads", mb.heads, teacher_heads)
    if mb.embedding > teacher_hidden:
        raise ParamsError(
            f"params.yaml: key 'general_distill.mobilebert.student.embedding': {mb.embedding} exceeds the block width, "
            f"which is the teacher's hidden size ({teacher_hidden}); use at most {teacher_hidden}")
    try:
        resolve_layer_map("uniform", mb.layers or teacher_layers, teacher_layers)
    except LayerMapError as exc:
        raise ParamsError(f"params.yaml: key 'general_distill.mobilebert.student.layers': {exc}") from None
    init = p.general_distill.distilbert.init_layers
    if isinstance(init, list):
        bad = [i for i in init if not 0 <= i < teacher_layers]
        if bad:
            raise ParamsError(
                f"params.yaml: key 'general_distill.distilbert.init_layers': {bad} are not teacher layers "
                f"(0-based indices 0..{teacher_layers - 1})"
            )


def check_teacher(p: Params) -> None:
    try:
        cfg = teacher_config(p.base.teacher, p.base.allow_pickle_weights)
    except (ModelSpecError, OSError) as exc:
        raise ParamsError(f"params.yaml: key 'base.teacher': {exc}") from None
    check_against_teacher(p, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size)


def check_data(p: Params, root: str | Path = ".") -> None:
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
    corpus = Path(root) / p.prepare.corpus
    if not corpus.is_file():
        raise ParamsError(f"params.yaml: key 'prepare.corpus': {corpus} does not exist (paragraph-per-line text)")


def check_all(p: Params, root: str | Path = ".") -> None:
    check_data(p, root)
    check_teacher(p)
