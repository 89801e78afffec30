"""The features one forward pass collects for the distillation losses: hidden states of chosen layers and their
attention maps, stopping once the deepest layer needed has run. The objectives compare them; the teacher cache
stores the teacher's (both import them from here, so neither imports the other)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from kdistill.distill.attention import AttentionScores, self_attention_modules
from kdistill.families import embedding_output, layers_of, layout_of
from kdistill.models import encoder_of


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


@dataclass(frozen=True)
class FeatureSpec:
    hidden: tuple[int, ...]  # hidden_states indices to keep (0 = embedding output, l = layer l's output)
    scores: tuple[int, ...]  # 1-based layers whose attention maps to keep
    probs: bool = False  # keep the attention probabilities rather than the pre-softmax scores (no softmax per step)

    @property
    def deepest(self) -> int:
        return max((*self.hidden, *self.scores, 1))


class _StopForward(Exception):
    """Raised from a hook once the deepest layer a loss needs has run: the layers above would be wasted work."""


def run_layers(model: nn.Module, batch: dict, upto: int, want_attn: bool, score_layers=None, probs: bool = False):
    """The embedding output and the outputs of layers 1..`upto` (1-based) of a BERT-family encoder, plus each of
    those layers' pre-softmax attention scores when `want_attn` (only `score_layers` when given, None elsewhere;
    with `probs`, the attention probabilities the model computed instead); the forward stops after layer `upto`."""
    enc = encoder_of(model)
    layers = layers_of(enc)
    if not 1 <= upto <= len(layers):
        raise ValueError(f"layer {upto} out of range 1..{len(layers)}")
    hidden: list[torch.Tensor] = []

    def keep(_mod, _inp, out):
        hidden.append(out[0] if isinstance(out, tuple) else out)

    def keep_and_stop(mod, inp, out):
        keep(mod, inp, out)
        raise _StopForward

    # what layer 1 reads (ELECTRA projects its embeddings to the layers' width: the projected output)
    handles = [embedding_output(enc).register_forward_hook(keep)]
    handles += [layers[i].register_forward_hook(keep) for i in range(upto - 1)]
    handles.append(layers[upto - 1].register_forward_hook(keep_and_stop))
    cap = AttentionScores(enc, probs=probs, layers=score_layers) if want_attn else contextlib.nullcontext()
    try:
        with cap:
            enc(**model_inputs(batch))
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return hidden, ((cap.probs if probs else cap.scores) if want_attn else None)


def layer_qkv(model: nn.Module, batch: dict, layer: int) -> dict[str, torch.Tensor]:
    """The outputs of layer `layer`'s (1-based) query, key and value projections, [B, L, heads x head width] each
    (MiniLM's relations; a fused projection, ModernBERT's Wqkv, split in three); the forward stops after that layer."""
    enc = encoder_of(model)
    attn = self_attention_modules(enc)[layer - 1]
    names = layout_of(enc.config).qkv
    out: dict[str, torch.Tensor] = {}

    def keep(_m, _i, o, k):  # the first call: DeBERTa's shared projections run again on its relative embeddings
        if k == "fused" and "query" not in out:
            out.update(zip(("query", "key", "value"), o.chunk(3, dim=-1)))
        elif k != "fused":
            out.setdefault(k, o)

    roles = ("fused",) if len(names) == 1 else ("query", "key", "value")
    handles = [getattr(attn, n).register_forward_hook(lambda m, i, o, k=k: keep(m, i, o, k)) for n, k in zip(names, roles)]
    try:
        run_layers(model, batch, layer, want_attn=False)
    finally:
        for h in handles:
            h.remove()
    return out
