"""Training objectives: each returns its unweighted loss components; `weights` says how they add up.

The teacher is held outside the module tree (it is never trained, never checkpointed) and always runs in
eval() under no_grad.
"""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path

import torch
from torch import nn

from kdistill.distill import losses as L
from kdistill.distill.attention import AttentionScores
from kdistill.distill.features import FeatureSpec, layer_qkv, model_inputs, run_layers
from kdistill.distill.layer_map import absolute_layer, check_heads, resolve_layer_map
from kdistill.families import mlm_head_prefixes, mlm_logits
from kdistill.fingerprint import dataset_digest, module_digest
from kdistill.io import atomic_file
from kdistill.models import encoder_of, is_span_model, output_logits
from kdistill.train import distributed
from kdistill.train.evaluation import predict


class _WithTeacher(nn.Module):
    def _set_teacher(self, teacher: nn.Module | None) -> None:
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: no grads, not in state_dict

    def to(self, *args, **kwargs):
        if self.teacher is not None:
            self.teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never trains, whatever mode the student is in
        return self


def _mask_batch(batch: dict, special_ids, mask_token_id: int, vocab_size: int, p: float):
    """MLM masking of a batch (special and padded positions never masked): (masked ids, labels) on its device."""
    ids = batch["input_ids"]
    special = torch.isin(ids, torch.tensor(special_ids, device=ids.device)) | (batch["attention_mask"] == 0)
    masked, labels = L.mask_tokens(ids.cpu(), special.cpu(), mask_token_id, vocab_size, p)
    return masked.to(ids.device), labels.to(ids.device)


class Supervised(nn.Module):
    """Plain fine-tuning on gold labels (teacher fine-tune, no-teacher baselines)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.student = model
        self.weights = {"hard": 1.0}

    def forward(self, batch: dict) -> dict:
        return {"hard": L.hard_label_loss(output_logits(self.student(**model_inputs(batch))), batch["labels"])}


class Intermediate(_WithTeacher):
    """TinyBERT's embedding, hidden-state and attention losses (general distillation and task stage 1)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        weights: dict[str, float],
        layer_map="uniform",
        attention: str = "scores",
        shared_projection: bool = False,
        mask_padding: bool = True,
    ):
        super().__init__()
        s_cfg, t_cfg = student.config, teacher.config
        self.student = student
        self._set_teacher(teacher)
        self.layer_map = resolve_layer_map(layer_map, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
        self.weights = {k: float(v) for k, v in weights.items() if k in ("emb", "hidn", "attn")}
        if self.weights.get("attn", 0.0) > 0:
            check_heads(s_cfg.num_attention_heads, t_cfg.num_attention_heads)
        self.projections = L.Projections(
            s_cfg.hidden_size, t_cfg.hidden_size, 1 + len(self.layer_map), shared=shared_projection
        )
        self.attention = attention
        self.mask_padding = mask_padding
        self.teacher_features = None  # a kdistill.distill.teacher_cache.TeacherFeatures, read instead of running the teacher

    def feature_spec(self):
        """The teacher outputs this loss reads, for a teacher cache (None: the loss reads padded positions)."""
        if not self.mask_padding:
            return None
        attn = tuple(self.layer_map) if self.weights.get("attn", 0.0) > 0 else ()
        return FeatureSpec((0, *self.layer_map), attn, probs=self.attention == "probs")

    def _run(self, model: nn.Module, batch: dict, want_attn: bool):
        """Hidden states and, when `want_attn`, the attention maps the loss compares: pre-softmax scores, or in
        `probs` mode the probabilities the model itself computed."""
        enc = encoder_of(model)
        if want_attn:
            probs = self.attention == "probs"
            with AttentionScores(enc, probs=probs) as cap:
                out = enc(**model_inputs(batch), output_hidden_states=True)
            return out.hidden_states, (cap.probs if probs else cap.scores)
        return enc(**model_inputs(batch), output_hidden_states=True).hidden_states, None

    def forward(self, batch: dict) -> dict:
        want_attn = self.weights.get("attn", 0.0) > 0
        mask = batch["attention_mask"]
        if self.teacher_features is not None:  # scores or probabilities, as feature_spec() asked
            t_hidden, t_scores = self.teacher_features.lookup(batch["row"], mask)
        else:
            with torch.no_grad():
                t_hidden, t_scores = self._run(self.teacher, batch, want_attn)
        s_hidden, s_scores = self._run(self.student, batch, want_attn)
        hmask = mask if self.mask_padding else None
        out = {"emb": L.hidden_mse(self.projections(0, s_hidden[0]), t_hidden[0], hmask)}
        out["hidn"] = sum(
            L.hidden_mse(self.projections(i + 1, s_hidden[i + 1]), t_hidden[t], hmask) for i, t in enumerate(self.layer_map)
        ) / len(self.layer_map)
        if want_attn:
            att = []
            for i, t in enumerate(self.layer_map):
                # both scores, or both probabilities; fewer student heads: each one against its group's mean
                a_s, a_t = s_scores[i], L.group_heads(t_scores[t - 1], s_scores[i].size(1))
                att.append(L.attention_mse(a_s, a_t, mask, mask_queries=self.mask_padding))
            out["attn"] = sum(att) / len(att)
        return out


def teacher_logits(
    teacher: nn.Module, dataset, collate, batch_size: int = 64, precision: str = "fp32", cache_dir: str | Path | None = None
) -> torch.Tensor:
    """Teacher outputs for every row of `dataset`, in row order: the prediction-layer cache, computed once.

    With `cache_dir`, the logits are also kept on disk under a key made of the teacher's weights, the rows' token ids
    and the precision, so that every student distilled from the same teacher on the same data shares one pass (the
    key is the content itself, so a changed teacher or dataset can never be served stale logits).
    """
    if cache_dir is None:
        return predict(teacher, dataset, batch_size, collate, precision=precision)
    key = f"precision={precision} {module_digest(teacher)} {dataset_digest(dataset, ('input_ids', 'token_type_ids'))}"
    path = Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if distributed.world().active:
        return _sharded_teacher_logits(teacher, dataset, collate, batch_size, precision, path)
    # Stages running side by side want the same logits: the first computes them, the others wait and read.
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():  # the key covers every row, so a hit is exactly these rows' logits
            print(f"[teacher_logits] reusing {path}", flush=True)
            return torch.load(path)
        logits = predict(teacher, dataset, batch_size, collate, precision=precision)
        with atomic_file(path) as tmp:  # a reader sees the whole file or none
            torch.save(logits, tmp)
    return logits


def _sharded_teacher_logits(teacher, dataset, collate, batch_size: int, precision: str, path: Path) -> torch.Tensor:
    """teacher_logits for a data-parallel stage: each rank computes a block of rows, every rank gets them all,
    rank 0 writes the cache. Rank 0 alone holds the lock that other stages take, so the ranks never wait on it."""
    w = distributed.world()
    lock = open(path.with_suffix(".lock"), "w") if w.main else None
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if distributed.rank0_value(path.is_file()):
            if w.main:
                print(f"[teacher_logits] reusing {path}", flush=True)
            return torch.load(path)
        mine = distributed.shard_rows(len(dataset))
        part = predict(teacher, dataset.select(mine), batch_size, collate, precision=precision)
        logits = torch.cat(distributed.gather_objects(part))
        if w.main:
            with atomic_file(path) as tmp:
                torch.save(logits, tmp)
        return logits
    finally:
        if lock is not None:
            lock.close()


class Prediction(_WithTeacher):
    """Prediction-layer distillation: a soft-label term against the teacher, plus gold labels when weighted.

    With `cached_logits` (rows aligned with the dataset's `row` column) the teacher runs once before training,
    not at every step of every epoch.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        weights: dict[str, float],
        temperature: float = 1.0,
        kind: L.SoftKind = "kl",
        t2_scaling: bool = False,
        soft_name: str = "pred",
        cached_logits: torch.Tensor | None = None,
    ):
        super().__init__()
        if teacher is None and cached_logits is None:
            raise ValueError("Prediction needs a teacher or cached teacher logits")
        self.student = student
        self._set_teacher(teacher)
        self.weights = dict(weights)
        self.temperature, self.kind, self.t2, self.soft_name = temperature, kind, t2_scaling, soft_name
        object.__setattr__(self, "cached", cached_logits)

    def forward(self, batch: dict) -> dict:
        s_logits = output_logits(self.student(**model_inputs(batch)))
        labelled = None
        if self.cached is not None:
            t_logits = self.cached[batch["row"].cpu()].to(s_logits.device)
        else:
            with torch.no_grad():
                t_logits = output_logits(self.teacher(**model_inputs(batch)))
        if s_logits.dim() == 3 and is_span_model(self.student):  # extractive QA: start and end distributions
            mask = batch["attention_mask"]
            t_logits = t_logits[:, : s_logits.size(1)]
            out = {self.soft_name: L.soft_span_loss(s_logits, t_logits, mask, self.temperature, self.kind, self.t2)}
            if self.weights.get("hard", 0.0) > 0:
                out["hard"] = L.span_loss(s_logits, batch["labels"], mask)
            return out
        if s_logits.dim() == 3:  # token classification: per-token soft targets over the labelled sub-tokens
            labelled = batch["labels"] != -100
            full = s_logits
            s_logits, t_logits = s_logits[labelled], t_logits[:, : s_logits.size(1)][labelled]
            if not labelled.any():  # no word starts in this batch (all cut off): nothing to learn, graph kept
                return {self.soft_name: full.sum() * 0.0, **({"hard": full.sum() * 0.0}
                                                              if self.weights.get("hard", 0.0) > 0 else {})}
        if s_logits.size(-1) == 1:
            soft = L.soft_regression_loss(s_logits, t_logits)
        elif getattr(self.student.config, "problem_type", None) == "multi_label_classification":
            soft = L.soft_multilabel_loss(s_logits, t_logits, self.temperature, self.t2)
        else:
            soft = L.soft_label_loss(s_logits, t_logits, self.temperature, self.kind, self.t2)
        out = {self.soft_name: soft}
        if self.weights.get("hard", 0.0) > 0:
            labels = batch["labels"][labelled] if labelled is not None else batch["labels"]
            out["hard"] = L.hard_label_loss(s_logits, labels)
        return out


class Relations(_WithTeacher):
    """MiniLMv2's objective: the student's last layer learns the query-query, key-key and value-value relations of
    one teacher layer (`qq`, `kk`, `vv`: relation KLs over `heads` relation heads). No projection is learnt, so
    the student's width and head count are free."""

    def __init__(self, student: nn.Module, teacher: nn.Module, weights: dict[str, float], teacher_layer: int,
                 heads: int):
        super().__init__()
        self.student = student
        self._set_teacher(teacher)
        self.weights = {k: float(v) for k, v in weights.items() if k in ("qq", "kk", "vv")}
        self.teacher_layer = absolute_layer(teacher_layer, teacher.config.num_hidden_layers)
        for who, cfg in (("student", student.config), ("teacher", teacher.config)):
            if cfg.hidden_size % heads:
                raise ValueError(f"{heads} relation heads must divide the {who}'s query/key/value width {cfg.hidden_size}")
        self.heads = heads

    def forward(self, batch: dict) -> dict:
        mask = batch["attention_mask"]
        with torch.no_grad():
            t = layer_qkv(self.teacher, batch, self.teacher_layer)
        s = layer_qkv(self.student, batch, self.student.config.num_hidden_layers)
        return {k[0] * 2: L.relation_kl(s[k], t[k], self.heads, mask) for k in ("query", "key", "value")
                if self.weights.get(k[0] * 2, 0.0) > 0}


class DistilBertGeneral(_WithTeacher):
    """DistilBERT's pre-training objective: L_mlm (hard), L_ce (soft MLM targets, T^2-scaled KL), L_cos."""

    def __init__(
        self,
        student_mlm: nn.Module,
        teacher_mlm: nn.Module,
        weights: dict[str, float],
        temperature: float = 2.0,
        mlm_probability: float = 0.15,
        special_ids: tuple[int, ...] = (0, 101, 102),
        mask_token_id: int = 103,
    ):
        super().__init__()
        self.student = student_mlm
        self._set_teacher(teacher_mlm)
        self.weights = {k: float(v) for k, v in weights.items() if k in ("mlm", "ce", "cos")}
        self.temperature, self.p = temperature, mlm_probability
        self.special_ids, self.mask_token_id = special_ids, mask_token_id

    def forward(self, batch: dict) -> dict:
        masked, labels = _mask_batch(batch, self.special_ids, self.mask_token_id, self.student.config.vocab_size, self.p)
        inputs = {**model_inputs(batch), "input_ids": masked}
        sel = labels != -100
        # The vocabulary projection is the costliest layer: apply the MLM heads to masked positions only.
        with torch.no_grad():
            t_h = encoder_of(self.teacher)(**inputs).last_hidden_state
            t_logits = mlm_logits(self.teacher, t_h[sel])
        s_h = encoder_of(self.student)(**inputs).last_hidden_state
        s_logits = mlm_logits(self.student, s_h[sel])
        out = {"mlm": L.mlm_loss(s_logits, labels[sel]) if sel.any() else s_h.sum() * 0.0}
        if sel.any():
            out["ce"] = L.soft_label_loss(s_logits, t_logits, self.temperature, "kl", t2_scaling=True)
        else:
            out["ce"] = s_h.sum() * 0.0
        out["cos"] = L.cosine_loss(s_h, t_h, batch["attention_mask"])
        return out


class MlmHeadFit(nn.Module):
    """Fit an MLM head on a frozen encoder (for a teacher that ships without one)."""

    def __init__(self, mlm_model: nn.Module, mlm_probability: float = 0.15, special_ids=(0, 101, 102), mask_token_id=103):
        super().__init__()
        self.student = mlm_model
        head, embedding = mlm_head_prefixes(mlm_model), mlm_model.get_input_embeddings().weight
        for n, p in mlm_model.named_parameters():
            # the decoder weight is tied to the (frozen) word embeddings; only the transform and bias learn
            p.requires_grad_(n.startswith(head) and p is not embedding)
        self.weights = {"mlm": 1.0}
        self.p, self.special_ids, self.mask_token_id = mlm_probability, special_ids, mask_token_id

    def train(self, mode: bool = True):
        super().train(mode)
        encoder_of(self.student).eval()  # frozen encoder: no dropout
        return self

    def forward(self, batch: dict) -> dict:
        masked, labels = _mask_batch(batch, self.special_ids, self.mask_token_id, self.student.config.vocab_size, self.p)
        with torch.no_grad():
            h = encoder_of(self.student)(**{**model_inputs(batch), "input_ids": masked}).last_hidden_state
        sel = labels != -100
        if not sel.any():
            return {"mlm": sum(p.sum() for p in self.student.parameters() if p.requires_grad) * 0.0}
        return {"mlm": L.mlm_loss(mlm_logits(self.student, h[sel]), labels[sel])}


@torch.no_grad()
def masked_token_accuracy(mlm_model: nn.Module, dataset, collate, batch_size=32, p=0.15, seed=0, special_ids=(0, 101, 102), mask_token_id=103) -> float:
    """Held-out accuracy of an MLM head at predicting masked tokens (fixed masking seed)."""
    mlm_model.eval()
    g = torch.Generator().manual_seed(seed)
    device = next(mlm_model.parameters()).device
    hit = n = 0
    for s in range(0, len(dataset), batch_size):
        rows = dataset[s : s + batch_size]
        rows = [dict(zip(rows, vals)) for vals in zip(*rows.values())]
        batch = collate(rows)
        ids = batch["input_ids"]
        special = torch.isin(ids, torch.tensor(special_ids)) | (batch["attention_mask"] == 0)
        masked, labels = L.mask_tokens(ids, special, mask_token_id, mlm_model.config.vocab_size, p, generator=g)
        h = encoder_of(mlm_model)(input_ids=masked.to(device), attention_mask=batch["attention_mask"].to(device)).last_hidden_state
        sel = labels != -100
        pred = mlm_logits(mlm_model, h[sel.to(device)]).argmax(-1).cpu()
        hit += int((pred == labels[sel]).sum())
        n += int(sel.sum())
    return hit / max(1, n)


class FeatureTransfer(_WithTeacher):
    """MobileBERT's layer-wise knowledge transfer: feature-map transfer (fmt) and attention transfer (at).

    `layers` are the student blocks (1-based) whose outputs and attention learn from the teacher's layer
    `layer_map[l - 1]`; with one layer this is one stage of progressive transfer, with all of them the joint loss.
    Both models run only up to the deepest layer involved.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        layers: list[int],
        layer_map: list[int],
        weights: dict[str, float],
        normalize: bool = True,
        mean_weight: float = 1.0,
        var_weight: float = 1.0,
    ):
        super().__init__()
        self.student = student
        self._set_teacher(teacher)
        self.layers, self.layer_map = list(layers), list(layer_map)
        self.weights = {k: float(v) for k, v in weights.items() if k in ("fmt", "at")}
        self.fmt_args = {"normalize": normalize, "mean_weight": mean_weight, "var_weight": var_weight}
        self.teacher_features = None  # a kdistill.distill.teacher_cache.TeacherFeatures, read instead of running the teacher

    def feature_spec(self):
        """The teacher outputs these losses read, for a teacher cache (both losses ignore padded positions)."""
        mapped = tuple(sorted({self.layer_map[l - 1] for l in self.layers}))
        return FeatureSpec(mapped, mapped if self.weights.get("at", 0.0) > 0 else ())

    def layer_losses(self, batch: dict, s_hidden=None, s_scores=None, t_hidden=None, t_scores=None) -> dict:
        want_attn = self.weights.get("at", 0.0) > 0
        deepest = max(self.layers)
        if t_hidden is None and self.teacher_features is not None:
            t_hidden, t_scores = self.teacher_features.lookup(batch["row"], batch["attention_mask"])
        elif t_hidden is None:
            with torch.no_grad():
                t_hidden, t_scores = run_layers(self.teacher, batch, self.layer_map[deepest - 1], want_attn)
        if s_hidden is None:
            s_hidden, s_scores = run_layers(self.student, batch, deepest, want_attn)
        mask = batch["attention_mask"]
        fmt = [L.feature_map_loss(s_hidden[l], t_hidden[self.layer_map[l - 1]], mask, **self.fmt_args) for l in self.layers]
        out = {"fmt": sum(fmt) / len(fmt)}
        if want_attn:
            at = [L.attention_kl(s_scores[l - 1], t_scores[self.layer_map[l - 1] - 1], mask) for l in self.layers]
            out["at"] = sum(at) / len(at)
        return out

    def forward(self, batch: dict) -> dict:
        return self.layer_losses(batch)


class MobileBertPretrain(FeatureTransfer):
    """MobileBERT's pre-training distillation: MLM on gold tokens plus the teacher's soft MLM targets at
    `temperature` (kd), optionally with the layer-wise fmt/at terms of every block alongside."""

    def __init__(
        self,
        student_mlm: nn.Module,
        teacher_mlm: nn.Module,
        layer_map: list[int],
        weights: dict[str, float],
        temperature: float = 1.0,
        mlm_probability: float = 0.15,
        special_ids: tuple[int, ...] = (0, 101, 102),
        mask_token_id: int = 103,
        **fmt_args,
    ):
        layers = list(range(1, len(layer_map) + 1))
        super().__init__(student_mlm, teacher_mlm, layers, layer_map, weights, **fmt_args)
        self.weights = {k: float(v) for k, v in weights.items() if k in ("mlm", "kd", "fmt", "at")}
        self.temperature, self.p = temperature, mlm_probability
        self.special_ids, self.mask_token_id = special_ids, mask_token_id

    def forward(self, batch: dict) -> dict:
        masked, labels = _mask_batch(batch, self.special_ids, self.mask_token_id, self.student.config.vocab_size, self.p)
        batch = {**batch, "input_ids": masked}
        sel = labels != -100
        want_attn = self.weights.get("at", 0.0) > 0
        with torch.no_grad():
            t_hidden, t_scores = run_layers(self.teacher, batch, self.teacher.config.num_hidden_layers, want_attn)
            t_logits = mlm_logits(self.teacher, t_hidden[-1][sel])
        s_hidden, s_scores = run_layers(self.student, batch, len(self.layers), want_attn)
        # the vocabulary projection is the costliest layer: apply the MLM heads to masked positions only
        s_logits = mlm_logits(self.student, s_hidden[-1][sel])
        out = {}
        if sel.any():
            out["mlm"] = L.mlm_loss(s_logits, labels[sel])
            out["kd"] = L.soft_label_loss(s_logits, t_logits, self.temperature, "kl", t2_scaling=True)
        else:
            out["mlm"] = out["kd"] = s_hidden[-1].sum() * 0.0
        if self.weights.get("fmt", 0.0) > 0 or want_attn:
            out.update(self.layer_losses(batch, s_hidden, s_scores, t_hidden, t_scores))
        return out


def progressive_scope(model: nn.Module, layer: int, lower_lr_scale: float = 0.0) -> dict[str, float]:
    """Stage `layer` (1-based) of progressive knowledge transfer: block `layer` trains (with the embeddings at
    stage 1, the only stage that uses them fresh); blocks below are frozen, or train at `lower_lr_scale` x the
    learning rate when it is > 0; blocks above and any head are frozen (they do not take part in the loss).

    Sets requires_grad on `model`'s parameters and returns {parameter name: lr scale} for those that train.
    """
    enc = encoder_of(model)
    prefix = "" if enc is model else f"{model.base_model_prefix}."
    scales: dict[str, float] = {}
    for name, p in model.named_parameters():
        rest = name.removeprefix(prefix)
        if rest.startswith("encoder.layer."):
            idx = int(rest.split(".")[2]) + 1
            scale = 1.0 if idx == layer else (lower_lr_scale if idx < layer else 0.0)
        elif rest.startswith("embeddings."):
            scale = 1.0 if layer == 1 else lower_lr_scale
        else:
            scale = 0.0
        p.requires_grad_(scale > 0)
        if scale > 0:
            scales[name] = scale
    return scales


def unfreeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
