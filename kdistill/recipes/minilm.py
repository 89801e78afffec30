"""MiniLM (Wang et al., 2020; MiniLMv2, 2021): the student's last layer learns the self-attention relations of one
upper teacher layer (query-query, key-key, value-value, over a stated number of relation heads), so its width and
head count need not match the teacher's and nothing is projected; then task distillation on soft and hard labels.

The authors released students, not the distillation code: the losses follow the papers (kdistill.distill.losses.
relation_kl, checked against a hand computation in the tests).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from transformers import AutoModel

from kdistill.distill.layer_map import absolute_layer
from kdistill.distill.objectives import Prediction, Relations
from kdistill.models import load_model, tinybert_config
from kdistill.recipes.base import GeneralContext, GeneralPlan, TaskContext, trainer_config
from kdistill.schema import GeneralSection, OptimParams, ParamsError, Section, StudentShape, params_key
from kdistill.student_init import check_fits_teacher, init_from_teacher
from kdistill.train.phases import Phase

NEEDS_TEACHER_MLM = False


class GeneralParams(GeneralSection):
    """general_distill.minilm"""

    student: StudentShape = StudentShape()
    # the teacher layer whose relations the student's last layer learns (1-based; -1: the last). MiniLMv2 takes the
    # last layer of a base-size teacher and an upper-middle one of a large teacher
    teacher_layer: int = -1
    relation_heads: int = Field(12, ge=1)  # must divide the query/key/value width of both teacher and student
    weights: dict[Literal["qq", "kk", "vv"], float] = {"qq": 1.0, "kk": 1.0, "vv": 1.0}
    optim: OptimParams = OptimParams(lr=5e-4, epochs=1.0)


class TaskParams(Section):
    """task_distill.minilm"""

    temperature: float = Field(1.0, gt=0)
    alpha_soft: float = Field(0.5, ge=0, le=1)  # loss = alpha * soft + (1 - alpha) * hard
    optim: OptimParams = OptimParams(lr=1e-4, epochs=2.0)
    cache_teacher_outputs: bool = True


def spread_layers(student_layers: int, teacher_layer: int) -> list[int]:
    """Teacher layers (1-based) evenly spread up to `teacher_layer`, one per student layer: 3 up to 6 -> [2, 4, 6]."""
    if student_layers > teacher_layer:
        raise ParamsError(f"params.yaml: key 'general_distill.minilm.student.layers': a teacher-initialised student of "
                          f"{student_layers} layers needs as many teacher layers up to teacher_layer ({teacher_layer})")
    return [round(teacher_layer * (i + 1) / student_layers) for i in range(student_layers)]


def check_teacher(p, layers: int, heads: int, hidden: int, ffn: int | None = None) -> None:
    """The teacher layer exists; the relation heads divide both widths; a teacher-initialised student fits."""
    g = p.general_distill.minilm
    with params_key("general_distill.minilm.teacher_layer"):
        teacher_layer = absolute_layer(g.teacher_layer, layers)
    for who, width in (("teacher", hidden), ("student", g.student.hidden)):
        if width % g.relation_heads:
            raise ParamsError(f"params.yaml: key 'general_distill.minilm.relation_heads': {g.relation_heads} does not "
                              f"divide the {who}'s query/key/value width {width}; use a common divisor of {hidden} and "
                              f"{g.student.hidden}")
    if g.student.init == "teacher":
        with params_key("general_distill.minilm.student"):
            check_fits_teacher(g.student, layers, heads, hidden, ffn)
        spread_layers(g.student.layers, teacher_layer)


def general(ctx: GeneralContext) -> GeneralPlan:
    g = ctx.p.general_distill.minilm
    teacher = load_model(AutoModel, ctx.teacher)
    s = g.student
    student = AutoModel.from_config(tinybert_config(teacher.config, s.layers, s.hidden, s.heads, s.ffn, s.activation))
    obj = Relations(student, teacher, g.weights, g.teacher_layer, g.relation_heads)
    info = {"teacher_layer": obj.teacher_layer, "relation_heads": g.relation_heads, "init": s.init}
    if s.init == "teacher":  # the layers the student starts from: spread evenly up to the distilled teacher layer
        info.update(init_from_teacher(student, teacher, spread_layers(s.layers, obj.teacher_layer)))
    return GeneralPlan(student, [Phase("general", obj, trainer_config(g.optim, ctx, "general distill (minilm)"))], info)


def token_level_task(p) -> str | None:
    """Its task stage distils soft labels only: a student may bring its own tokenizer (cross-vocabulary)."""
    return None


def task(ctx: TaskContext) -> list[Phase]:
    t = ctx.p.task_distill.minilm
    cfg = trainer_config(t.optim, ctx, "task distill (minilm)")
    cache = ctx.logits(cfg.precision) if t.cache_teacher_outputs or ctx.cross_vocab else None
    obj = Prediction(ctx.student, ctx.teacher, {"soft": t.alpha_soft, "hard": 1 - t.alpha_soft}, t.temperature, "kl",
                     True, soft_name="soft", cached_logits=cache)
    return [Phase("prediction", obj, cfg, evaluate=True)]
