"""Capture pre-softmax attention scores Q.K^T/sqrt(d) from Hugging Face BERT encoders.

Hugging Face returns post-softmax probabilities, and none at all under SDPA. TinyBERT distils the raw scores,
so we hook each layer's query and key projections and form the scores ourselves. The projections run under every
attention implementation, so capture does not depend on eager attention; models whose self-attention has no
separate `query`/`key` projections, or that add relative position terms to the scores, are refused.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import KdistillError


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
    >>> cap.scores  # list, one per layer, pre-softmax, no mask added
    """

    def __init__(self, model: nn.Module):
        self.modules = self_attention_modules(model)
        self._handles: list = []
        self._q: dict[int, torch.Tensor] = {}
        self.scores: list[torch.Tensor] = []

    def _hook(self, idx: int, kind: str):
        def fn(_mod, _inp, out):
            if kind == "q":
                self._q[idx] = out
                return
            attn = self.modules[idx]
            heads, d = attn.num_attention_heads, attn.attention_head_size
            q = self._q.pop(idx)
            b, L, _ = out.shape
            q = q.view(b, L, heads, d).transpose(1, 2)
            k = out.view(b, L, heads, d).transpose(1, 2)
            scale = getattr(attn, "scaling", d**-0.5)
            self.scores.append(torch.matmul(q, k.transpose(-1, -2)) * scale)

        return fn

    def clear(self) -> None:
        self.scores = []
        self._q = {}

    def __enter__(self) -> "AttentionScores":
        self.clear()
        for i, m in enumerate(self.modules):
            self._handles.append(m.query.register_forward_hook(self._hook(i, "q")))
            self._handles.append(m.key.register_forward_hook(self._hook(i, "k")))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def scores_to_probs(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Softmax over keys with padded keys excluded, as the model itself computes it."""
    key_mask = attention_mask[:, None, None, :].to(torch.bool)
    return torch.softmax(scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min), dim=-1)
