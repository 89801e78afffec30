"""DistilBERT (Sanh et al., 2019): the teacher's every-other layers, pre-trained with L_mlm + L_ce (soft MLM
targets) + L_cos, then task-distilled on soft and hard labels."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from transformers import AutoModelForMaskedLM

from kdistill.distill.objectives import DistilBertGeneral, Prediction
from kdistill.models import distilbert_student, every_other_layer, load_model
from kdistill.recipes.base import (
    GeneralContext,
    GeneralPlan,
    TaskContext,
    special_ids,
    trainer_config,
)
from kdistill.schema import GeneralSection, OptimParams, ParamsError, Section
from kdistill.train.phases import Phase

NEEDS_TEACHER_MLM = True


class GeneralParams(GeneralSection):
    """general_distill.distilbert"""

    init_layers: Literal["every_other"] | list[int] = "every_other"
    temperature: float = Field(2.0, gt=0)
    weights: dict[Literal["mlm", "ce", "cos"], float] = {"mlm": 2.0, "ce": 5.0, "cos": 1.0}
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    optim: OptimParams = OptimParams(lr=1e-4, epochs=1.0)

    @field_validator("init_layers")
    @classmethod
    def _distinct_layers(cls, v):
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("must be 'every_other' or a non-empty list of distinct teacher layer indices")
        return v


class TaskParams(Section):
    """task_distill.distilbert"""

    temperature: float = Field(2.0, gt=0)
    alpha_soft: float = Field(0.5, ge=0, le=1)  # loss = alpha * soft + (1 - alpha) * hard
    soft_loss: Literal["kl", "ce", "ce_mean_classes"] = "kl"
    t2_scaling: bool = True
    optim: OptimParams = OptimParams(lr=1e-4, epochs=2.0)
    cache_teacher_outputs: bool = True


def check_teacher(p, layers: int, heads: int, hidden: int, ffn: int | None = None) -> None:
    """The layers the student starts from exist in the teacher."""
    init = p.general_distill.distilbert.init_layers
    bad = [i for i in init if not 0 <= i < layers] if isinstance(init, list) else []
    if bad:
        raise ParamsError(f"params.yaml: key 'general_distill.distilbert.init_layers': {bad} are not teacher layers "
                          f"(0-based indices 0..{layers - 1})")


def general(ctx: GeneralContext) -> GeneralPlan:
    g = ctx.p.general_distill.distilbert
    teacher = load_model(AutoModelForMaskedLM, ctx.teacher_mlm)
    layers = every_other_layer(teacher.config.num_hidden_layers) if g.init_layers == "every_other" else g.init_layers
    student = distilbert_student(teacher, layers)
    special, mask_id = special_ids(ctx.tokenizer)
    obj = DistilBertGeneral(student, teacher, g.weights, g.temperature, g.mlm_probability, special, mask_id)
    return GeneralPlan(student, [Phase("general", obj, trainer_config(g.optim, ctx, "general distill (distilbert)"))],
                       {"init_layers": layers})


def token_level_task(p) -> str | None:
    """Its task stage distils soft labels only: a student may bring its own tokenizer (cross-vocabulary)."""
    return None


def task(ctx: TaskContext) -> list[Phase]:
    d = ctx.p.task_distill.distilbert
    cfg = trainer_config(d.optim, ctx, "task distill (distilbert)")
    cache = ctx.logits(cfg.precision) if d.cache_teacher_outputs or ctx.cross_vocab else None
    obj = Prediction(ctx.student, ctx.teacher, {"ce": d.alpha_soft, "hard": 1 - d.alpha_soft}, d.temperature,
                     d.soft_loss, d.t2_scaling, soft_name="ce", cached_logits=cache)
    return [Phase("prediction", obj, cfg, evaluate=True)]
