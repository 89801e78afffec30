"""Whether the teacher's own classification head fits the data: used as it is, fine-tuned, or refused.

A fine-tuned teacher names its outputs in config.id2label. With `teacher_finetune.mode: auto` a head that names the
data's labels in the data's order is kept and the teacher trains for zero steps; a head that names other labels, or
the same ones in another order, is refused before any work (a silent mismatch scores near chance downstream); a model
with no head, or one with the default LABEL_0.. names, is fine-tuned.
"""

from __future__ import annotations

import math
import re

from kdistill.data.task import Task
from kdistill.errors import KdistillError

DEFAULT_NAME = re.compile(r"^LABEL_\d+$")


class TeacherHeadError(KdistillError, ValueError):
    pass


def head_labels(cfg, head: str = "ForSequenceClassification") -> list[str] | None:
    """The label names of a teacher's classification head (`head`: the architecture's suffix, ForTokenClassification
    for tags), in id order; None when it has no such head or only the default LABEL_i names (nothing to compare)."""
    if not any(a.endswith(head) for a in (cfg.architectures or [])):
        return None
    names = [str(cfg.id2label[i]) for i in sorted(cfg.id2label, key=int)]
    return None if all(DEFAULT_NAME.match(n) for n in names) else names


def has_regression_head(cfg) -> bool:
    return (any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or []))
            and cfg.num_labels == 1 and cfg.problem_type == "regression")


def plan(cfg, task: Task, mode: str, teacher: str) -> str:
    """'use' (keep the head, zero training steps) or 'train'; raises when the head and the data disagree."""
    if mode == "train":
        return "train"
    if task.is_span:  # a QA head has no label names: its two outputs are the start and the end logit
        if any(a.endswith("ForQuestionAnswering") for a in (cfg.architectures or [])):
            return "use"
        if mode == "use":
            raise TeacherHeadError(f"teacher_finetune.mode: use, but {teacher} has no question-answering head (a "
                                   "ForQuestionAnswering architecture); set mode: train")
        return "train"
    if task.is_regression:
        if has_regression_head(cfg):
            return "use"
        if mode == "use":
            raise TeacherHeadError(f"teacher_finetune.mode: use, but {teacher} has no regression head (a "
                                   "ForSequenceClassification with num_labels 1 and problem_type regression); set mode: train")
        return "train"
    names = head_labels(cfg, "ForTokenClassification" if task.is_token_level else "ForSequenceClassification")
    if names is None:
        if mode == "use":
            raise TeacherHeadError(f"teacher_finetune.mode: use, but {teacher} has no classification head with label "
                                   "names (config.id2label); set mode: train, or save the fine-tuned model with its id2label")
        return "train"
    data = list(task.labels)
    if names == data:
        return "use"
    if sorted(names) == sorted(data):
        raise TeacherHeadError(
            f"{teacher} names the same labels in another order: teacher {names}, data {data}; its output i is the "
            f"teacher's label i, so set data.labels: {names} (or teacher_finetune.mode: train to fine-tune a new head)")
    raise TeacherHeadError(f"{teacher} was fine-tuned for other labels: teacher {names}, data {data}; set "
                           "teacher_finetune.mode: train to fine-tune it on this data, or name the right teacher")


def near_chance(task: Task, score: float, gold) -> tuple[bool, float]:
    """(whether `score` is within two standard errors of what knowing nothing gives, that chance level)."""
    n = max(len(gold), 1)
    chance = task.chance(gold)
    if task.is_regression:
        return abs(score) <= 2 / math.sqrt(n), chance
    se = math.sqrt(max(chance * (1 - chance), 0.01) / n)
    return score <= chance + 2 * se, chance
