"""A narrower, shallower student started from its teacher's weights instead of at random (`student.init: teacher`).

Depth: student layer i takes the weights of the teacher layer the recipe's layer map pairs it with. Width: the
student keeps an evenly spaced subset of the teacher's units on each axis: hidden (residual) units, attention heads
and, inside each head, query/key/value dimensions, and FFN units. Evenly spaced rather than by an importance
score because it needs no data and no extra pass, is the same on every machine, and keeps units from the whole
range (a score computed on a few batches would pick by noise among units of near-equal norm). Weights are copied,
not rescaled: the sums over fewer units shrink, and the first steps of distillation restore the scale.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from kdistill.errors import KdistillError
from kdistill.families import family_of, ffn_size
from kdistill.models import encoder_of, word_table


class StudentInitError(KdistillError, ValueError):
    pass


def evenly(n_from: int, n_keep: int) -> torch.Tensor:
    """`n_keep` indices spread evenly over 0..n_from-1, first and last included (n_keep <= n_from)."""
    if not 1 <= n_keep <= n_from:
        raise StudentInitError(f"cannot keep {n_keep} of {n_from} units")
    return torch.linspace(0, n_from - 1, n_keep).round().long()


def check_fits_teacher(shape, layers: int, heads: int, hidden: int, ffn: int | None = None) -> None:
    """A teacher-initialised student (a StudentShape) keeps a subset of the teacher's units on every axis."""
    for what, s, t in (("layers", shape.layers, layers), ("hidden size", shape.hidden, hidden),
                       ("attention heads", shape.heads, heads), ("FFN size", shape.ffn, ffn)):
        if t is not None and s > t:
            raise StudentInitError(f"a teacher-initialised student keeps a subset of the teacher's {what}: the "
                                   f"student's {s} exceeds the teacher's {t} (set init: random, or fewer)")
    dh_t, dh_s = hidden // heads, shape.hidden // shape.heads
    if dh_s > dh_t:
        raise StudentInitError(f"the student's head width hidden/heads = {dh_s} exceeds the teacher's {dh_t}: give "
                               f"it more heads (or set init: random)")


def _axes(t_cfg, s_cfg) -> dict[str, torch.Tensor]:
    """The teacher units each student axis keeps: hidden, attention (head-major, as Q/K/V lay them out), ffn, and the
    stacked forms some families use: a fused [Q; K; V] projection (qkv), a gated FFN's [gate; up] (glu), one value
    per head (heads)."""
    t_ffn, s_ffn = ffn_size(t_cfg), ffn_size(s_cfg)
    shape = SimpleNamespace(layers=s_cfg.num_hidden_layers, hidden=s_cfg.hidden_size, heads=s_cfg.num_attention_heads,
                            ffn=s_ffn)
    check_fits_teacher(shape, t_cfg.num_hidden_layers, t_cfg.num_attention_heads, t_cfg.hidden_size, t_ffn)
    dh_t = t_cfg.hidden_size // t_cfg.num_attention_heads
    dh_s = s_cfg.hidden_size // s_cfg.num_attention_heads
    heads = evenly(t_cfg.num_attention_heads, s_cfg.num_attention_heads)
    dims = evenly(dh_t, dh_s)
    attn = (heads[:, None] * dh_t + dims[None, :]).reshape(-1)
    ffn = evenly(t_ffn, s_ffn)
    return {"hid": evenly(t_cfg.hidden_size, s_cfg.hidden_size), "attn": attn, "ffn": ffn, "heads": heads,
            "qkv": torch.cat([attn + i * t_cfg.hidden_size for i in range(3)]),
            "glu": torch.cat([ffn, ffn + t_ffn]), "all": None}


def _roles(name: str, rules) -> tuple[str, str]:
    """(output axis, input axis) of a parameter, by the module it belongs to (its family's init_rules)."""
    module = name.rsplit(".", 1)[0]
    for suffix, out_axis, in_axis in rules:
        if module.endswith(suffix):
            return out_axis, in_axis
    raise StudentInitError(f"no rule to take {name!r} from the teacher")


def _take(w: torch.Tensor, rows, cols) -> torch.Tensor:
    if rows is not None:
        w = w.index_select(0, rows)
    if cols is not None and w.ndim == 2:
        w = w.index_select(1, cols)
    return w


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, layer_map: list[int]) -> dict:
    """Copy into `student` (a model of the teacher's family, built by models.tinybert_config) the teacher's units it
    keeps; student layer i (0-based) takes teacher layer layer_map[i] (1-based). Returns what was taken, for the
    record."""
    s_enc, t_enc = encoder_of(student), encoder_of(teacher)
    s_cfg, t_cfg = s_enc.config, t_enc.config
    if len(layer_map) != s_cfg.num_hidden_layers:
        raise StudentInitError(f"layer map {layer_map} has {len(layer_map)} entries for {s_cfg.num_hidden_layers} layers")
    axes = _axes(t_cfg, s_cfg)
    fam = family_of(t_cfg)
    layers = fam.layers + "."
    # the token tables are narrowed to the student's embedding width; a factorised table (ELECTRA) as wide as the
    # student's is kept whole, and its projection up to the layers' width narrowed (or dropped, when the student's
    # layers are as wide as its table)
    t_emb, s_emb = (word_table(e.embeddings).size(1) for e in (t_enc, s_enc))
    axes["emb"] = None if s_emb == t_emb else evenly(t_emb, s_emb)
    t_state = t_enc.state_dict()
    copied, left = 0, []
    for name, param in s_enc.state_dict().items():
        src = name
        if name.startswith(layers):
            i, rest = name[len(layers):].split(".", 1)
            src = f"{layers}{layer_map[int(i)] - 1}.{rest}"
        if name.endswith("position_ids") or name.endswith("token_type_ids"):  # buffers, not weights
            continue
        if src not in t_state and name.startswith("pooler."):  # a classifier teacher without one (RoBERTa's)
            left.append(name)
            continue
        if src not in t_state:
            raise StudentInitError(f"the teacher has no {src!r} for the student's {name!r}")
        out_axis, in_axis = _roles(name, fam.init_rules)
        value = _take(t_state[src], axes[out_axis], axes[in_axis])
        if value.shape != param.shape:
            raise StudentInitError(f"{name}: took {tuple(value.shape)} from the teacher, the student needs {tuple(param.shape)}")
        param.copy_(value)
        copied += param.numel()
    return {"init": "teacher", "layers": list(layer_map), "hidden_units": "evenly spaced", "copied_parameters": copied,
            "left_random": left}
