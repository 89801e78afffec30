"""Distillation losses, each a function returning a scalar; the objectives weight and sum them.

Conventions (see README "Losses"): every mean is over the elements that count (non-padding tokens, unpadded keys);
`attention_mask` is the usual [B, L] 1/0 mask of real tokens.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

SoftKind = Literal["kl", "ce", "ce_mean_classes"]


def _full(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32; fp32 and fp64 as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def soft_label_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    kind: SoftKind = "kl",
    t2_scaling: bool = False,
) -> torch.Tensor:
    """Soft-label loss between softmax(z_T/T) and log_softmax(z_S/T), averaged over the batch.

    - "kl": KL(p_T || p_S) (DistilBERT's KLDivLoss, batchmean);
    - "ce": cross-entropy -sum_c p_T log p_S; differs from "kl" by the teacher's entropy, a constant: same gradient;
    - "ce_mean_classes": the TinyBERT reference code's `(-p_T * log p_S).mean()`, i.e. "ce" divided by the class count.
    With `t2_scaling` the loss is multiplied by T^2 (Hinton et al.) so its gradient scale does not shrink with T.
    """
    # in fp32 even under bf16/fp16 autocast: two low-precision softmaxes give KL < 0 and biased gradients
    with torch.autocast(student_logits.device.type, enabled=False):
        log_p_s = F.log_softmax(_full(student_logits) / temperature, dim=-1)
        p_t = F.softmax(_full(teacher_logits) / temperature, dim=-1)
    if kind == "kl":
        loss = (p_t * (torch.log(p_t.clamp_min(1e-30)) - log_p_s)).sum(-1).mean()
    elif kind == "ce":
        loss = -(p_t * log_p_s).sum(-1).mean()
    elif kind == "ce_mean_classes":
        loss = -(p_t * log_p_s).mean()
    else:
        raise ValueError(f"unknown soft-label loss kind {kind!r}: use 'kl', 'ce' or 'ce_mean_classes'")
    return loss * temperature**2 if t2_scaling else loss


def soft_regression_loss(student_pred: torch.Tensor, teacher_pred: torch.Tensor) -> torch.Tensor:
    """Regression tasks (STS-B): the teacher's prediction is the soft target, matched by MSE."""
    return F.mse_loss(student_pred.view(-1).float(), teacher_pred.view(-1).float())


def soft_multilabel_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, t2_scaling: bool = False
) -> torch.Tensor:
    """Multi-label soft targets: each label is its own yes/no, so the teacher's sigmoid(z_T/T) is matched by the
    binary KL of every label, summed over labels and averaged over the batch (the counterpart of "kl" above)."""
    with torch.autocast(student_logits.device.type, enabled=False):
        s, t = _full(student_logits) / temperature, _full(teacher_logits) / temperature
        p_t = torch.sigmoid(t)
        kl = (p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s)))
    loss = kl.sum(-1).mean()
    return loss * temperature**2 if t2_scaling else loss


def hard_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on gold labels (classification; per labelled sub-token for token classification), binary
    cross-entropy per label (multi-label: labels are multi-hot, shaped like the logits) or MSE (a single regression
    output)."""
    if logits.dim() == 3 and labels.dim() == 2 and labels.size(1) == 2 != logits.size(1):
        return span_loss(logits, labels)  # extractive QA: [B, L, 2] start/end logits, [B, 2] gold token positions
    if logits.dim() == 3:  # per token (token classification): the labelled sub-tokens only (-100 elsewhere)
        return mlm_loss(logits, labels)
    if labels.dim() == 2 and labels.shape == logits.shape:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    if logits.size(-1) == 1:
        return F.mse_loss(logits.view(-1).float(), labels.view(-1).float())
    return F.cross_entropy(logits.float(), labels.view(-1).long())


# a logit that takes no probability (padding), finite so that 0 * log p stays 0 in the soft losses
_NO_POSITION = -1e4


def span_loss(logits: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Extractive QA on gold spans: the mean of the cross-entropies of the start and the end position over the
    window's tokens (Hugging Face's QA heads' loss), padding excluded when `attention_mask` is given."""
    logits = logits.float()
    if attention_mask is not None:
        logits = logits.masked_fill(~attention_mask.bool()[..., None], _NO_POSITION)
    return (F.cross_entropy(logits[..., 0], positions[:, 0].long())
            + F.cross_entropy(logits[..., 1], positions[:, 1].long())) / 2


def soft_span_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, attention_mask: torch.Tensor,
                   temperature: float = 1.0, kind: SoftKind = "kl", t2_scaling: bool = False) -> torch.Tensor:
    """Extractive QA soft targets: the teacher's start and end distributions over the window's real tokens
    ([B, L, 2] logits, padding excluded from both softmaxes), each matched by `soft_label_loss`, averaged."""
    keep = attention_mask.bool()[..., None]
    s = _full(student_logits).masked_fill(~keep, _NO_POSITION)
    t = _full(teacher_logits).masked_fill(~keep, _NO_POSITION)
    return (soft_label_loss(s[..., 0], t[..., 0], temperature, kind, t2_scaling)
            + soft_label_loss(s[..., 1], t[..., 1], temperature, kind, t2_scaling)) / 2


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over masked positions only (labels are -100 elsewhere)."""
    if not (labels != -100).any():
        return logits.sum() * 0.0  # no masked token in this batch: zero loss, graph kept
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=-100)


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose `probability` of the real tokens; of those 80% -> [MASK], 10% -> random, 10% kept.

    Returns (masked input ids, labels with -100 at unchosen positions).
    """
    labels = input_ids.clone()
    probs = torch.full(input_ids.shape, probability)
    probs.masked_fill_(special_tokens_mask.bool(), 0.0)
    chosen = torch.bernoulli(probs, generator=generator).bool()
    labels[~chosen] = -100
    ids = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool() & chosen
    ids[to_mask] = mask_token_id
    to_random = torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool() & chosen & ~to_mask
    ids[to_random] = torch.randint(vocab_size, ids.shape, generator=generator)[to_random]
    return ids, labels


def cosine_loss(h_s: torch.Tensor, h_t: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens of 1 - cos(h_S, h_T) (DistilBERT's L_cos on the last hidden states)."""
    cos = F.cosine_similarity(h_s.float(), h_t.float(), dim=-1)
    m = attention_mask.to(cos.dtype)
    return ((1.0 - cos) * m).sum() / m.sum().clamp_min(1.0)


def hidden_mse(
    h_s_projected: torch.Tensor, h_t: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE between projected student states and teacher states ([B, L, D]).

    With a mask, the mean runs over non-padding tokens x hidden units; without one, over every element
    (the TinyBERT reference code, which lets padding count).
    """
    d = h_s_projected.float() - h_t.float()
    if attention_mask is None:
        return (d * d).mean()
    m = attention_mask.to(d.dtype)[..., None]
    d = d * m  # a multiply rather than pow + masked sums: a third less time, backward included
    return (d * d).sum() / (m.sum() * d.size(-1)).clamp_min(1.0)


def attention_mse(
    a_s: torch.Tensor, a_t: torch.Tensor, attention_mask: torch.Tensor, mask_queries: bool = True
) -> torch.Tensor:
    """(1/h) sum over heads of MSE(A_S, A_T) for [B, H, L, L] score or probability maps.

    Padded keys never count (their raw scores are meaningless); padded queries count only with
    `mask_queries=False`. The mean runs over the entries that count, heads included. The maps must be finite
    everywhere (the captured scores carry no additive mask; a cache holds zeros at padding): the mask multiplies,
    which is half the time of building, expanding and filling a boolean mask, backward included.
    """
    m = attention_mask.to(torch.float32)
    w = m[:, None, None, :] * m[:, None, :, None] if mask_queries else m[:, None, None, :]  # [B, 1, Lq or 1, Lk]
    d = (a_s.float() - a_t.float()) * w
    count = w.sum() * a_s.size(1) * (1 if mask_queries else a_s.size(2))
    return (d * d).sum() / count.clamp_min(1)


class Projections(nn.Module):
    """Learned maps W from student width to teacher width: one per mapped layer (embeddings included) or one shared.

    When widths are equal the maps still start as the identity, so they do no harm but can still adapt.
    """

    def __init__(self, student_dim: int, teacher_dim: int, count: int, shared: bool = False):
        super().__init__()
        n = 1 if shared else count
        self.shared = shared
        self.count = count
        self.maps = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in range(n))
        if student_dim == teacher_dim:
            for m in self.maps:
                nn.init.eye_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if not 0 <= i < self.count:
            raise IndexError(f"projection {i} out of range (0..{self.count - 1})")
        return self.maps[0 if self.shared else i](h)


def feature_map_loss(
    h_s: torch.Tensor,
    h_t: torch.Tensor,
    attention_mask: torch.Tensor,
    normalize: bool = True,
    mean_weight: float = 1.0,
    var_weight: float = 1.0,
) -> torch.Tensor:
    """MobileBERT's feature-map transfer between same-width layer outputs ([B, L, N]), over non-padding tokens.

    The paper's loss is the MSE averaged over the T tokens and N features. It also reports that splitting it into
    a normalised feature-map discrepancy and a feature-map statistics discrepancy stabilises training; with
    `normalize` that is what is computed: MSE between the per-token standardised maps (zero mean, unit variance over
    N), plus `mean_weight` x the squared difference of the per-token means, plus `var_weight` x the absolute
    difference of the per-token variances.
    """
    s, t = h_s.float(), h_t.float()
    m = attention_mask.to(s.dtype)
    tokens = m.sum().clamp_min(1.0)
    if not normalize:
        return (((s - t) ** 2) * m[..., None]).sum() / (tokens * s.size(-1))
    s_mean, t_mean = s.mean(-1, keepdim=True), t.mean(-1, keepdim=True)
    s_var, t_var = s.var(-1, unbiased=False, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
    s_n = (s - s_mean) / torch.sqrt(s_var + 1e-6)
    t_n = (t - t_mean) / torch.sqrt(t_var + 1e-6)
    shape = (((s_n - t_n) ** 2).mean(-1) * m).sum() / tokens
    stats = ((((s_mean - t_mean) ** 2) * mean_weight + (s_var - t_var).abs() * var_weight).squeeze(-1) * m).sum() / tokens
    return shape + stats


def group_heads(probs: torch.Tensor, heads: int) -> torch.Tensor:
    """Average [B, H, L, L] attention maps (distributions or pre-softmax scores) over consecutive groups of H/heads
    heads: a teacher with k times the student's heads gives one target per student head (head i <- teacher heads
    i*k .. i*k+k-1). A mean of distributions over the same keys is a distribution; a mean of score maps is the score
    map of the group's concatenated queries and keys (scaled), a bilinear form in the tokens like any one head's.
    """
    b, h, lq, lk = probs.shape
    if h == heads:
        return probs
    if h % heads:
        raise ValueError(f"cannot group {h} teacher heads into {heads} student heads: {heads} must divide {h}")
    return probs.view(b, heads, h // heads, lq, lk).mean(2)


def attention_kl(
    s_scores: torch.Tensor, t_scores: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """MobileBERT's attention transfer: KL(teacher || student) between attention distributions, per head.

    Inputs are pre-softmax scores [B, H_s, L, L] and [B, H_t, L, L] (H_t a multiple of H_s, grouped by
    `group_heads`). Padded keys are excluded from both softmaxes (they get probability 0), so they never count;
    the mean runs over heads and non-padding queries.
    """
    keys = attention_mask[:, None, None, :].bool()
    with torch.autocast(s_scores.device.type, enabled=False):
        neg = torch.finfo(torch.float32).min
        log_p_s = F.log_softmax(s_scores.float().masked_fill(~keys, neg), dim=-1)
        p_t = group_heads(F.softmax(t_scores.float().masked_fill(~keys, neg), dim=-1), s_scores.size(1))
        kl = (p_t * (torch.log(p_t.clamp_min(1e-30)) - log_p_s)).masked_fill(~keys, 0.0).sum(-1)  # [B, H, L]
    q = attention_mask[:, None, :].to(kl.dtype).expand_as(kl)
    return (kl * q).sum() / q.sum().clamp_min(1.0)


def relation_kl(x_s: torch.Tensor, x_t: torch.Tensor, heads: int, attention_mask: torch.Tensor) -> torch.Tensor:
    """MiniLMv2's self-attention relation loss for one kind of vector (queries, keys or values).

    x_s [B, L, d_s] and x_t [B, L, d_t] are the concatenated per-head vectors of one layer (the output of its
    query, key or value projection). Each is split into `heads` relation heads of width d/heads, whatever the models'
    own head counts, and R = softmax(X X^T / sqrt(d/heads)) is formed per relation head; the loss is
    KL(R_t || R_s), summed over keys, averaged over relation heads and real (unpadded) query positions. Padded keys
    take no probability in either relation.
    """
    b, n = x_s.shape[:2]
    if x_s.size(-1) % heads or x_t.size(-1) % heads:
        raise ValueError(f"{heads} relation heads must divide both widths ({x_s.size(-1)}, {x_t.size(-1)})")

    def log_relation(x: torch.Tensor) -> torch.Tensor:
        x = x.float().view(b, n, heads, -1).transpose(1, 2)  # [B, R, L, d_r]
        scores = x @ x.transpose(-1, -2) / math.sqrt(x.size(-1))
        scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
        return torch.log_softmax(scores, dim=-1)

    log_t, log_s = log_relation(x_t), log_relation(x_s)
    keys = attention_mask[:, None, None, :].bool()
    # 0 * log 0 at padded keys: where() keeps the -inf - -inf out of the sum
    kl = torch.where(keys, log_t.exp() * (log_t - log_s), torch.zeros((), device=log_t.device)).sum(-1)  # [B, R, L]
    queries = attention_mask[:, None, :].to(kl.dtype)
    return (kl * queries).sum() / (queries.sum() * heads).clamp_min(1)
