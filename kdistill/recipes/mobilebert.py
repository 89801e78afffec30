"""MobileBERT (Sun et al., 2020): the teacher's depth, thin blocks (a bottleneck inside each, stacked FFNs).

General stage: progressive knowledge transfer (block l learns the teacher's layer-l feature map and attention
while the blocks below are frozen, one block after another), then all blocks together on pre-training
distillation (MLM + the teacher's soft MLM targets). Task stage: soft + hard labels, optionally after a
layer-wise transfer pass on the task data.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from transformers import AutoModelForMaskedLM, MobileBertForMaskedLM

from kdistill.distill.layer_map import check_heads, resolve_layer_map
from kdistill.distill.objectives import (
    FeatureTransfer,
    MobileBertPretrain,
    Prediction,
    progressive_scope,
    unfreeze,
)
from kdistill.models import ModelSpecError, init_mobilebert_embeddings, load_model, mobilebert_config
from kdistill.recipes.base import (
    GeneralContext,
    GeneralPlan,
    TaskContext,
    special_ids,
    trainer_config,
)
from kdistill.schema import GeneralSection, OptimParams, ParamsError, Section, divisors, params_key
from kdistill.train.phases import Phase
from kdistill.train.precision import PrecisionSpec

NEEDS_TEACHER_MLM = True
STUDENT_MODEL_TYPE = "mobilebert"  # its own architecture, not the teacher's family


class MobileBertShape(Section):
    """Inter-block width and vocabulary are the teacher's; everything inside a block is narrow."""

    layers: int | None = Field(None, ge=1, le=48)  # None: the teacher's depth (as the paper)
    bottleneck: int = Field(96, ge=8)  # intra-block width
    heads: int = Field(4, ge=1)  # must divide the bottleneck and the teacher's head count
    ffn: int = Field(384, ge=8)  # intermediate size of each feed-forward network
    stacked_ffn: int = Field(2, ge=1, le=8)  # feed-forward networks per block
    embedding: int = Field(128, ge=8)  # factorised token-embedding width (trigram convolution up to the block width)
    normalization: Literal["no_norm", "layer_norm"] = "no_norm"  # no_norm: MobileBERT's element-wise NoNorm
    activation: Literal["relu", "gelu"] = "relu"

    @model_validator(mode="after")
    def _heads_divide_bottleneck(self):
        if self.bottleneck % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide bottleneck ({self.bottleneck}); "
                             f"valid head counts: {divisors(self.bottleneck)}")
        return self


class FeatureMapParams(Section):
    normalize: bool = True  # normalised map discrepancy + statistics discrepancy (the paper's stabilised form)
    mean_weight: float = Field(1.0, ge=0)
    var_weight: float = Field(1.0, ge=0)


class ProgressiveParams(Section):
    """Progressive knowledge transfer: block l trains alone on its fmt + at losses, one block after another."""

    steps_per_layer: int = Field(60, ge=1)
    lower_lr_scale: float = Field(0.0, ge=0, le=1)  # 0: blocks below are frozen; > 0: they train at this x lr
    weights: dict[Literal["fmt", "at"], float] = {"fmt": 1.0, "at": 1.0}
    lr: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(32, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    checkpoint_every: int = Field(50, ge=1)
    precision: PrecisionSpec | None = None


class MobileBertJointParams(Section):
    """After the progression, all blocks together: pre-training distillation (mlm + soft MLM targets, kd), with
    the layer-wise terms kept alongside when weighted."""

    weights: dict[Literal["mlm", "kd", "fmt", "at"], float] = {"mlm": 0.5, "kd": 0.5, "fmt": 1.0, "at": 1.0}
    temperature: float = Field(1.0, gt=0)
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    optim: OptimParams = OptimParams(lr=5e-4, max_steps=100)


class GeneralParams(GeneralSection):
    """general_distill.mobilebert"""

    student: MobileBertShape = MobileBertShape()
    # random: embeddings learnt from scratch (the paper); teacher: token table from the teacher's word vectors'
    # principal directions, position/segment tables copied (kdistill.models.init_mobilebert_embeddings)
    embedding_init: Literal["random", "teacher"] = "random"
    feature_map: FeatureMapParams = FeatureMapParams()
    progressive: ProgressiveParams = ProgressiveParams()
    joint: MobileBertJointParams = MobileBertJointParams()


class TaskParams(Section):
    """task_distill.mobilebert. Task distillation: soft + hard labels, optionally after a layer-wise transfer pass on the task data
    against the fine-tuned teacher (`transfer`; null skips it)."""

    temperature: float = Field(1.0, gt=0)
    alpha_soft: float = Field(0.5, ge=0, le=1)
    soft_loss: Literal["kl", "ce", "ce_mean_classes"] = "kl"
    t2_scaling: bool = True
    cache_teacher_outputs: bool = True
    transfer: OptimParams | None = None
    transfer_weights: dict[Literal["fmt", "at"], float] = {"fmt": 1.0, "at": 1.0}
    teacher_cache_gb: float = Field(8.0, ge=0)  # as tinybert's: used when `transfer` runs more than one epoch
    optim: OptimParams = OptimParams(lr=1e-4, epochs=2.0)


def check_teacher(p, layers: int, heads: int, hidden: int, ffn: int | None = None) -> None:
    """The student's heads group the teacher's, its embedding fits the teacher's width, its depth maps."""
    s = p.general_distill.mobilebert.student
    with params_key("general_distill.mobilebert.student.heads"):
        check_heads(s.heads, heads)
    if s.embedding > hidden:
        raise ParamsError(
            f"params.yaml: key 'general_distill.mobilebert.student.embedding': {s.embedding} exceeds the block width, "
            f"which is the teacher's hidden size ({hidden}); use at most {hidden}")
    with params_key("general_distill.mobilebert.student.layers"):
        resolve_layer_map("uniform", s.layers or layers, layers)



def token_level_task(p) -> str | None:
    """Why the task stage needs the teacher's tokens (None: soft labels only, so a student may bring its own)."""
    if p.task_distill.mobilebert.transfer is not None:
        return ("its task stage transfers feature maps position by position (task_distill.mobilebert.transfer), "
                "which needs the teacher's tokenization; set it to null to distil soft labels only")
    return None


def check_start(p, s_cfg, t_cfg) -> None:
    """A general student given with `from` fits layer-wise transfer: the teacher's width, a depth that maps, heads
    that group the teacher's (nothing to fit when the task stage distils soft labels only)."""
    if p.task_distill.mobilebert.transfer is None:
        return
    if s_cfg.hidden_size != t_cfg.hidden_size:
        raise ModelSpecError(f"its block width {s_cfg.hidden_size} differs from the teacher's hidden size "
                          f"{t_cfg.hidden_size}, which MobileBERT's feature-map transfer compares directly")
    resolve_layer_map("uniform", s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
    check_heads(s_cfg.num_attention_heads, t_cfg.num_attention_heads)


def build_student(teacher_cfg, shape, seed: int) -> MobileBertForMaskedLM:
    torch.manual_seed(seed)
    s = shape
    return MobileBertForMaskedLM(mobilebert_config(teacher_cfg, s.bottleneck, s.heads, s.ffn, s.stacked_ffn,
                                                   s.embedding, s.layers, s.normalization, s.activation))


def general(ctx: GeneralContext) -> GeneralPlan:
    g = ctx.p.general_distill.mobilebert
    teacher = load_model(AutoModelForMaskedLM, ctx.teacher_mlm)
    student = build_student(teacher.config, g.student, ctx.p.base.seed)
    dropped = init_mobilebert_embeddings(student, teacher) if g.embedding_init == "teacher" else None
    n = student.config.num_hidden_layers
    layer_map = resolve_layer_map("uniform", n, teacher.config.num_hidden_layers)
    fm = g.feature_map.model_dump()
    pg = g.progressive
    stage_optim = OptimParams(lr=pg.lr, batch_size=pg.batch_size, max_steps=pg.steps_per_layer,
                              warmup_ratio=pg.warmup_ratio, checkpoint_every=pg.checkpoint_every, precision=pg.precision)
    phases = []
    for layer in range(1, n + 1):
        obj = FeatureTransfer(student, teacher, [layer], layer_map, pg.weights, **fm)

        def scope(obj=obj, layer=layer):
            scales = progressive_scope(student, layer, pg.lower_lr_scale)
            obj.lr_scales = {f"student.{k}": v for k, v in scales.items()}

        phases.append(Phase(f"layer{layer}", obj, trainer_config(stage_optim, ctx, f"progressive transfer (block {layer}/{n})"),
                            prefix=f"l{layer}_", prepare=scope))
    j = g.joint
    special, mask_id = special_ids(ctx.tokenizer)
    joint = MobileBertPretrain(student, teacher, layer_map, j.weights, j.temperature, j.mlm_probability, special,
                               mask_id, **fm)
    phases.append(Phase("joint", joint, trainer_config(j.optim, ctx, "pre-training distillation (all blocks)"),
                        prepare=lambda: unfreeze(student)))
    info = {"layer_map": layer_map, "progression": [p.name for p in phases],
            "lower_blocks": "frozen" if pg.lower_lr_scale == 0 else f"lr x {pg.lower_lr_scale}",
            "embedding_init": g.embedding_init if dropped is None else f"teacher ({dropped:.1%} of variance dropped)"}
    return GeneralPlan(student, phases, info)


def task(ctx: TaskContext) -> list[Phase]:
    t = ctx.p.task_distill.mobilebert
    phases = []
    if t.transfer is not None:
        n, tn = ctx.student.config.num_hidden_layers, ctx.teacher.config.num_hidden_layers
        layer_map = resolve_layer_map("uniform", n, tn)
        fm = ctx.p.general_distill.mobilebert.feature_map.model_dump()
        obj = FeatureTransfer(ctx.student, ctx.teacher, list(range(1, n + 1)), layer_map, t.transfer_weights, **fm)
        tcfg = trainer_config(t.transfer, ctx, "task distill (mobilebert, layer-wise)")

        def use_cache(obj=obj, tcfg=tcfg):
            obj.teacher_features = ctx.features(obj, tcfg, t.teacher_cache_gb)

        phases.append(Phase("transfer", obj, tcfg, setup=use_cache))
    cfg = trainer_config(t.optim, ctx, "task distill (mobilebert)")
    cache = ctx.logits(cfg.precision) if t.cache_teacher_outputs or ctx.cross_vocab else None
    pred = Prediction(ctx.student, ctx.teacher, {"kd": t.alpha_soft, "hard": 1 - t.alpha_soft}, t.temperature,
                      t.soft_loss, t.t2_scaling, soft_name="kd", cached_logits=cache)
    phases.append(Phase("prediction", pred, cfg, evaluate=True))
    return phases
