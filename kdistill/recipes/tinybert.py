"""TinyBERT (Jiao et al., 2020): a fresh student of any shape learns the teacher's embeddings, hidden states and
attention scores (general and task stage 1), then its predictions (task stage 2)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from kdistill.distill.layer_map import check_heads, resolve_layer_map
from kdistill.distill.objectives import Intermediate, Prediction
from kdistill.models import load_model, tinybert_config
from kdistill.recipes.base import (
    GeneralContext,
    GeneralPlan,
    TaskContext,
    trainer_config,
)
from kdistill.schema import GeneralSection, LayerMapSpec, OptimParams, Section, StudentShape, params_key
from kdistill.student_init import check_fits_teacher, init_from_teacher
from kdistill.train.phases import Phase

NEEDS_TEACHER_MLM = False


class GeneralParams(GeneralSection):
    """general_distill.tinybert"""

    student: StudentShape = StudentShape()
    layer_map: LayerMapSpec = "uniform"
    attention: Literal["scores", "probs"] = "scores"
    shared_projection: bool = False
    mask_padding: bool = True
    weights: dict[Literal["emb", "hidn", "attn"], float] = {"emb": 1.0, "hidn": 1.0, "attn": 1.0}
    optim: OptimParams = OptimParams(lr=5e-4, epochs=1.0)


class TaskParams(Section):
    """task_distill.tinybert"""

    temperature: float = Field(1.0, gt=0)
    intermediate: OptimParams = OptimParams(lr=5e-4, epochs=1.0)
    prediction: OptimParams = OptimParams(lr=1e-4, epochs=2.0)
    weights: dict[Literal["emb", "hidn", "attn", "pred"], float] = {"emb": 1.0, "hidn": 1.0, "attn": 1.0, "pred": 1.0}
    cache_teacher_outputs: bool = True
    # disk budget (GiB) for the teacher's hidden states and scores, fp16 on disk, in a multi-epoch intermediate phase
    teacher_cache_gb: float = Field(8.0, ge=0)


def check_teacher(p, layers: int, heads: int, hidden: int, ffn: int | None = None) -> None:
    """What the schema cannot see: the layer map fits the teacher's depth, the student's heads its heads, and a
    teacher-initialised student is no wider than its teacher on any axis."""
    g = p.general_distill.tinybert
    with params_key("general_distill.tinybert.layer_map"):
        resolve_layer_map(g.layer_map, g.student.layers, layers)
    if g.student.init == "teacher":
        with params_key("general_distill.tinybert.student"):
            check_fits_teacher(g.student, layers, heads, hidden, ffn)
    if g.weights.get("attn", 0) > 0 or p.task_distill.tinybert.weights.get("attn", 0) > 0:
        with params_key("general_distill.tinybert.student.heads"):
            check_heads(g.student.heads, heads)



def token_level_task(p) -> str | None:
    """Why the task stage needs the teacher's tokens (None: soft labels only, so a student may bring its own)."""
    return ("its task stage distils hidden states and attention position by position (the intermediate phase), "
            "which needs the teacher's tokenization")


def check_start(p, s_cfg, t_cfg) -> None:
    """A general student given with `from` fits the task stage's losses: the layer map, and the heads if compared."""
    resolve_layer_map(p.general_distill.tinybert.layer_map, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
    if p.task_distill.tinybert.weights.get("attn", 0) > 0:
        check_heads(s_cfg.num_attention_heads, t_cfg.num_attention_heads)


def general(ctx: GeneralContext) -> GeneralPlan:
    g = ctx.p.general_distill.tinybert
    teacher = load_model(AutoModel, ctx.teacher)
    s = g.student
    student = AutoModel.from_config(tinybert_config(teacher.config, s.layers, s.hidden, s.heads, s.ffn, s.activation))
    obj = Intermediate(student, teacher, g.weights, g.layer_map, g.attention, g.shared_projection, g.mask_padding)
    info = {"layer_map": obj.layer_map, "init": s.init}
    if s.init == "teacher":
        info.update(init_from_teacher(student, teacher, obj.layer_map))

    def save_projections(tmp):
        save_file({k: v.contiguous() for k, v in obj.projections.state_dict().items()}, str(tmp / "projections.safetensors"))

    return GeneralPlan(student, [Phase("general", obj, trainer_config(g.optim, ctx, "general distill (tinybert)"))],
                       info, save_projections)


def task(ctx: TaskContext) -> list[Phase]:
    t, g = ctx.p.task_distill.tinybert, ctx.p.general_distill.tinybert
    inter = Intermediate(ctx.student, ctx.teacher, {k: v for k, v in t.weights.items() if k != "pred"}, g.layer_map,
                         g.attention, g.shared_projection, g.mask_padding)
    proj = ctx.general_dir / "projections.safetensors"
    if proj.is_file():  # the projections learnt in general distillation carry on
        inter.projections.load_state_dict(load_file(str(proj)))
    pred_cfg = trainer_config(t.prediction, ctx, "task distill (tinybert, prediction)")
    cache = ctx.logits(pred_cfg.precision) if t.cache_teacher_outputs else None
    pred = Prediction(ctx.student, ctx.teacher, {"pred": t.weights.get("pred", 1.0)}, t.temperature, "ce",
                      soft_name="pred", cached_logits=cache)
    inter_cfg = trainer_config(t.intermediate, ctx, "task distill (tinybert, intermediate)")

    def use_cache():  # only when the phase trains: a finished one needs no teacher outputs
        inter.teacher_features = ctx.features(inter, inter_cfg, t.teacher_cache_gb)

    return [Phase("intermediate", inter, inter_cfg, setup=use_cache), Phase("prediction", pred, pred_cfg, evaluate=True)]
