"""Capture pre-softmax attention scores Q.K^T/sqrt(d) from Hugging Face BERT-family encoders, computed once.

Hugging Face returns post-softmax probabilities, and none at all under SDPA. TinyBERT and MobileBERT distil from the
scores, so while a capture is active the encoder runs an attention function registered through transformers'
attention interface (`kdistill_scores`): it forms Q.K^T/sqrt(d) once, hands that tensor to the capture, and goes on to
the mask, the softmax and the values, so the model's output is what eager attention gives. Outside a capture the
model keeps its own (fastest) implementation. Models whose self-attention has no separate `query`/`key` projections,
or that add relative position terms to the scores, are refused.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from kdistill.errors import KdistillError
from kdistill.train.dropout import fast_dropout

CAPTURE_IMPLEMENTATION = "kdistill_scores"


def _scores_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention that records its pre-softmax scores in the module's sink, when one is attached; a layer
    whose scores nobody reads runs the fused kernel."""
    if getattr(module, "_kdistill_sink", None) is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    sink, idx = module._kdistill_sink
    sink[idx] = scores
    weights = scores if attention_mask is None else scores + attention_mask
    weights = nn.functional.softmax(weights, dim=-1)
    if module._kdistill_probs:  # the model's own probabilities (before dropout): no second softmax in the loss
        module._kdistill_probs[idx] = weights
    weights = fast_dropout(weights, dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(CAPTURE_IMPLEMENTATION, _scores_attention)
AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, eager_mask)  # additive float mask, as eager attention takes


class AttentionCaptureError(KdistillError, RuntimeError):
    pass


def self_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The per-layer self-attention modules of a BERT encoder, in layer order."""
    mods = [m for name, m in model.named_modules() if name.endswith("attention.self")]
    if not mods:
        raise AttentionCaptureError(
            f"{type(model).__name__} has no BERT self-attention modules ('...attention.self'); "
            "attention distillation supports BERT-architecture models (BertModel, BertFor*)"
        )
    for m in mods:
        if not (isinstance(getattr(m, "query", None), nn.Linear) and isinstance(getattr(m, "key", None), nn.Linear)):
            raise AttentionCaptureError(
                f"{type(m).__name__} has no separate query/key projections, so its pre-softmax scores cannot be formed"
            )
    cfg = getattr(model, "config", None)
    pos = getattr(cfg, "position_embedding_type", "absolute")
    if pos not in (None, "absolute"):
        raise AttentionCaptureError(
            f"position_embedding_type={pos!r} adds relative terms inside attention that Q.K^T does not include; "
            "use a model with absolute position embeddings"
        )
    return mods


class AttentionScores:
    """Context manager: while active, each forward pass of `model` records one [B, H, L, L] score tensor per layer.

    >>> with AttentionScores(model) as cap:
    ...     model(**batch)
    >>> cap.scores  # one per layer, pre-softmax, no mask added; None for a layer not in `layers` or not run
    >>> cap.probs  # with probs=True: the softmax the model computed (padded keys masked), before dropout
    """

    def __init__(self, model: nn.Module, probs: bool = False, layers=None):
        self.modules = self_attention_modules(model)
        self.layers = None if layers is None else set(layers)  # 1-based layers to record (None: all)
        self.config = model.config
        self.want_probs = probs
        self.scores: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []
        self._saved: str | None = None

    def __enter__(self) -> "AttentionScores":
        n = len(self.modules)
        self.scores, self.probs = [None] * n, ([None] * n if self.want_probs else [])
        for i, m in enumerate(self.modules):
            if self.layers is None or i + 1 in self.layers:
                m._kdistill_sink, m._kdistill_probs = (self.scores, i), self.probs
        # the modules read the implementation from the config they share with the model at every forward
        self._saved = self.config._attn_implementation
        self.config._attn_implementation = CAPTURE_IMPLEMENTATION
        return self

    def __exit__(self, *exc) -> None:
        self.config._attn_implementation = self._saved
        for m in self.modules:
            m._kdistill_sink = m._kdistill_probs = None

