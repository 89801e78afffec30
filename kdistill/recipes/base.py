"""What a recipe is given and what it returns. A recipe says how its student is built and which objectives its
general and task stages train, as phases; the step modules run them, save, log and register."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from kdistill.schema import OptimParams
from kdistill.train.evaluation import optim_to_trainer_config
from kdistill.train.phases import Phase
from kdistill.train.trainer import TrainerConfig

if TYPE_CHECKING:  # kdistill.config assembles Params from the recipes: a name for the type checker only
    from kdistill.config import Params


@dataclass
class GeneralContext:
    p: Params
    teacher: str  # the pre-trained teacher, as a from_pretrained path
    teacher_mlm: Path  # the teacher with an MLM head (stage teacher_mlm)
    tokenizer: object
    precision: Callable[[str | None], str]  # a stage precision setting -> resolved for this machine


@dataclass
class GeneralPlan:
    student: nn.Module  # saved (save_pretrained) as the general student
    phases: list[Phase]
    info: dict = field(default_factory=dict)  # logged to MLflow and kept in kdistill.json
    save_extra: Callable[[Path], None] | None = None  # more files beside the student (e.g. projections)


@dataclass
class TaskContext:
    p: Params
    student: nn.Module  # the general student with a fresh task head
    teacher: nn.Module | None  # the fine-tuned teacher (None for the baseline)
    general_dir: Path
    precision: Callable[[str | None], str]
    logits: Callable[[str], torch.Tensor]  # resolved precision -> the teacher's logits for every train row (cached)
    # (intermediate objective, its TrainerConfig, disk budget GiB) -> a teacher cache for it, or None (reason printed)
    features: Callable[[nn.Module, TrainerConfig, float], object | None] = lambda obj, cfg, budget: None
    # the student tokenizes the text its own way (general_distill.<recipe>.from with its own vocabulary): the teacher
    # is read only through `logits`, computed on the teacher's tokenization of the same rows
    cross_vocab: bool = False


def trainer_config(optim: OptimParams, ctx, desc: str) -> TrainerConfig:
    return optim_to_trainer_config(optim, ctx.p.base.seed, desc, ctx.precision(optim.precision))


def special_ids(tok) -> tuple[tuple[int, ...], int]:
    return (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id), tok.mask_token_id
