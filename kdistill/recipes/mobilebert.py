"""MobileBERT (Sun et al., 2020): the teacher's depth, thin blocks (a bottleneck inside each, stacked FFNs).

General stage: progressive knowledge transfer (block l learns the teacher's layer-l feature map and attention
while the blocks below are frozen, one block after another), then all blocks together on pre-training
distillation (MLM + the teacher's soft MLM targets). Task stage: soft + hard labels, optionally after a
layer-wise transfer pass on the task data.
"""

from __future__ import annotations

import torch
from transformers import BertForMaskedLM, MobileBertForMaskedLM

from kdistill.config import OptimParams
from kdistill.distill.layer_map import resolve_layer_map
from kdistill.distill.objectives import (
    FeatureTransfer,
    MobileBertPretrain,
    Prediction,
    progressive_scope,
    unfreeze,
)
from kdistill.models import init_mobilebert_embeddings, load_model, mobilebert_config
from kdistill.recipes.base import (
    GeneralContext,
    GeneralPlan,
    TaskContext,
    special_ids,
    trainer_config,
)
from kdistill.train.phases import Phase

NEEDS_TEACHER_MLM = True


def build_student(teacher_cfg, shape, seed: int) -> MobileBertForMaskedLM:
    torch.manual_seed(seed)
    s = shape
    return MobileBertForMaskedLM(mobilebert_config(teacher_cfg, s.bottleneck, s.heads, s.ffn, s.stacked_ffn,
                                                   s.embedding, s.layers, s.normalization, s.activation))


def general(ctx: GeneralContext) -> GeneralPlan:
    g = ctx.p.general_distill.mobilebert
    teacher = load_model(BertForMaskedLM, ctx.teacher_mlm)
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
    cache = ctx.logits(cfg.precision) if t.cache_teacher_outputs else None
    pred = Prediction(ctx.student, ctx.teacher, {"kd": t.alpha_soft, "hard": 1 - t.alpha_soft}, t.temperature,
                      t.soft_loss, t.t2_scaling, soft_name="kd", cached_logits=cache)
    phases.append(Phase("prediction", pred, cfg, evaluate=True))
    return phases
