"""Capture attention scores (pre-softmax) or probabilities from the encoders of every family, computed once.

Hugging Face returns post-softmax probabilities, and none at all under SDPA. TinyBERT and MobileBERT distil from the
scores, so while a capture is active the encoder's attention is seen in one of two ways (kdistill/families.py says
which for each family):
- `interface` (BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, ModernBERT): the encoder runs an attention function
  registered through transformers' attention interface (`kdistill_scores`): it forms Q.K^T x scaling once (after
  rotary positions, for ModernBERT), hands that tensor to the capture, and goes on to the mask, the softmax and the
  values, so the model's output is what eager attention gives. Outside a capture the model keeps its own (fastest)
  implementation.
- `softmax` (DeBERTa-v2/v3, MPNet): these form their scores inside the attention module, relative-position terms
  included, and call one softmax on them. While the module runs, that softmax is tapped: its input is the scores
  (the entries the model masked, at the dtype's minimum, are set to 0, as the `interface` capture carries no mask),
  its output the probabilities.
Either way the scores are finite and carry no padding mask; the losses apply it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from kdistill.errors import KdistillError
from kdistill.families import FamilyError, attention_modules, layout_of
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
    """The per-layer self-attention modules of an encoder of any family the engine reads, in layer order."""
    cfg = getattr(model, "config", None)
    try:
        fam = layout_of(cfg)
        mods = attention_modules(getattr(model, model.base_model_prefix, model))
    except (FamilyError, AttributeError):
        raise AttentionCaptureError(
            f"{type(model).__name__} has no self-attention modules of a family the engine reads; attention "
            "distillation reads BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, DeBERTa-v2, ModernBERT and MPNet "
            "encoders (the bare encoder, or one with a head)") from None
    for m in mods:
        if not all(isinstance(getattr(m, name, None), nn.Linear) for name in fam.qkv):
            raise AttentionCaptureError(f"{type(m).__name__} has no {'/'.join(fam.qkv)} projections, so its "
                                        "scores cannot be formed")
    pos = getattr(cfg, "position_embedding_type", "absolute") if fam.scores == "interface" else "absolute"
    if pos not in (None, "absolute"):
        raise AttentionCaptureError(
            f"position_embedding_type={pos!r} adds relative terms inside attention that Q.K^T does not include; "
            "use a model with absolute position embeddings"
        )
    return mods


class _SoftmaxTap:
    """torch.nn.functional.softmax while a `softmax`-family capture runs: the first call inside a watched attention
    module records its input (the scores) and output (the probabilities) for that module's layer. One forward at a
    time per process, as the trainer and the teacher cache run them (the watched module is process-wide state)."""

    def __init__(self):
        self.original = None
        self.watching = None  # (scores list, probs list or None, layer index) of the module running now
        self.users = 0

    def __call__(self, input, dim=None, *args, **kwargs):
        out = self.original(input, dim, *args, **kwargs)
        if self.watching is not None:
            scores, probs, idx = self.watching
            self.watching = None  # one softmax per attention module
            masked = input < torch.finfo(input.dtype).min / 2
            scores[idx] = input.masked_fill(masked, 0.0)
            if probs:
                probs[idx] = out
        return out

    def install(self):
        if self.users == 0:
            self.original = nn.functional.softmax
            nn.functional.softmax = self
        self.users += 1

    def remove(self):
        self.users -= 1
        if self.users == 0:
            nn.functional.softmax = self.original


_TAP = _SoftmaxTap()


class AttentionScores:
    """Context manager: while active, each forward pass of `model` records one [B, H, L, L] score tensor per layer.

    >>> with AttentionScores(model) as cap:
    ...     model(**batch)
    >>> cap.scores  # one per layer, pre-softmax, no mask added; None for a layer not in `layers` or not run
    >>> cap.probs  # with probs=True: the softmax the model computed (padded keys masked), before dropout
    """

    def __init__(self, model: nn.Module, probs: bool = False, layers=None):
        self.modules = self_attention_modules(model)
        self.tapped = layout_of(model.config).scores == "softmax"
        self.layers = None if layers is None else set(layers)  # 1-based layers to record (None: all)
        self.config = model.config
        self.want_probs = probs
        self.scores: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []
        self._saved: str | None = None

    def __enter__(self) -> "AttentionScores":
        n = len(self.modules)
        self.scores, self.probs = [None] * n, ([None] * n if self.want_probs else [])
        wanted = [i for i in range(n) if self.layers is None or i + 1 in self.layers]
        if self.tapped:
            self._hooks = []
            for i in wanted:
                m = self.modules[i]
                self._hooks.append(m.register_forward_pre_hook(
                    lambda _m, _a, i=i: setattr(_TAP, "watching", (self.scores, self.probs, i))))
                self._hooks.append(m.register_forward_hook(lambda *_a: setattr(_TAP, "watching", None)))
            _TAP.install()
            return self
        for i in wanted:
            self.modules[i]._kdistill_sink, self.modules[i]._kdistill_probs = (self.scores, i), self.probs
        # the modules read the implementation from the config they share with the model at every forward
        self._saved = self.config._attn_implementation
        self.config._attn_implementation = CAPTURE_IMPLEMENTATION
        return self

    def __exit__(self, *exc) -> None:
        if self.tapped:
            for h in self._hooks:
                h.remove()
            _TAP.watching = None
            _TAP.remove()
            return
        self.config._attn_implementation = self._saved
        for m in self.modules:
            m._kdistill_sink = m._kdistill_probs = None

