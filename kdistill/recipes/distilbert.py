"""DistilBERT (Sanh et al., 2019): the teacher's every-other layers, pre-trained with L_mlm + L_ce (soft MLM
targets) + L_cos, then task-distilled on soft and hard labels."""

from __future__ import annotations

from transformers import BertForMaskedLM

from kdistill.distill.objectives import DistilBertGeneral, Prediction
from kdistill.models import distilbert_student, every_other_layer, load_model
from kdistill.recipes.base import (
    GeneralContext,
    GeneralPlan,
    TaskContext,
    special_ids,
    trainer_config,
)
from kdistill.train.phases import Phase

NEEDS_TEACHER_MLM = True


def general(ctx: GeneralContext) -> GeneralPlan:
    g = ctx.p.general_distill.distilbert
    teacher = load_model(BertForMaskedLM, ctx.teacher_mlm)
    layers = every_other_layer(teacher.config.num_hidden_layers) if g.init_layers == "every_other" else g.init_layers
    student = distilbert_student(teacher, layers)
    special, mask_id = special_ids(ctx.tokenizer)
    obj = DistilBertGeneral(student, teacher, g.weights, g.temperature, g.mlm_probability, special, mask_id)
    return GeneralPlan(student, [Phase("general", obj, trainer_config(g.optim, ctx, "general distill (distilbert)"))],
                       {"init_layers": layers})


def task(ctx: TaskContext) -> list[Phase]:
    d = ctx.p.task_distill.distilbert
    cfg = trainer_config(d.optim, ctx, "task distill (distilbert)")
    cache = ctx.logits(cfg.precision) if d.cache_teacher_outputs else None
    obj = Prediction(ctx.student, ctx.teacher, {"ce": d.alpha_soft, "hard": 1 - d.alpha_soft}, d.temperature,
                     d.soft_loss, d.t2_scaling, soft_name="ce", cached_logits=cache)
    return [Phase("prediction", obj, cfg, evaluate=True)]
