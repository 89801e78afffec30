"""The encoder families a teacher may come from, and what each recipe needs of one.

Every recipe reads the same parts of an encoder: `embeddings` and `encoder.layer` (features.run_layers), the
self-attention's separate `query`/`key` projections (attention.py, for the attention losses), and a masked-LM head
(teacher_mlm, DistilBERT's and MobileBERT's soft MLM targets). BERT, RoBERTa, XLM-RoBERTa and ELECTRA share them;
students are built in the teacher's own family from its config (tokenizer, embeddings, positions, token types). The
families that do not are refused, per recipe, with the reason, before any work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdistill.errors import KdistillError


class FamilyError(KdistillError, ValueError):
    pass


@dataclass(frozen=True)
class Family:
    name: str
    mlm_head: tuple[str, ...]  # the masked-LM head's modules, applied in order to the encoder's output
    position_offset: bool = False  # positions start after the padding index (RoBERTa's convention)


FAMILIES = {
    "bert": Family("BERT", ("cls",)),
    "roberta": Family("RoBERTa", ("lm_head",), position_offset=True),
    "xlm-roberta": Family("XLM-RoBERTa", ("lm_head",), position_offset=True),
    "electra": Family("ELECTRA", ("generator_predictions", "generator_lm_head")),
}

# families the pinned transformers has but the engine cannot distil, with the reason (one per recipe where it differs)
REFUSED = {
    "distilbert": "its layers are `transformer.layer` with q_lin/k_lin attention and no token types, which the "
                  "feature, attention and student code do not read",
    "deberta-v2": "its disentangled attention adds relative-position terms to Q.K^T, so there is no plain score "
                  "matrix to distil, and its layers cannot be rebuilt at another width from the config alone",
    "deberta": "its disentangled attention adds relative-position terms to Q.K^T (no plain score matrix)",
    "modernbert": "its layers are `layers` with a fused Wqkv projection and rotary positions, which the feature and "
                  "attention code do not read",
}

def family_of(cfg, what: str = "teacher") -> Family:
    kind = getattr(cfg, "model_type", None)
    if kind in FAMILIES:
        return FAMILIES[kind]
    reason = REFUSED.get(kind, "it is not one of the families the engine reads")
    runs = ", ".join(f.name for f in FAMILIES.values())
    raise FamilyError(f"{what} is a {kind!r} model: no recipe runs on it because {reason}; "
                      f"recipes run on {runs} teachers")


def mlm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The masked-LM head of a *ForMaskedLM model applied to encoder outputs (selected positions only, typically)."""
    # the MobileBERT-style student has BERT's head layout
    fam = FAMILIES["bert"] if model.config.model_type == "mobilebert" else family_of(model.config, type(model).__name__)
    for name in fam.mlm_head:
        hidden = getattr(model, name)(hidden)
    return hidden


def mlm_head_prefixes(model: nn.Module) -> tuple[str, ...]:
    fam = FAMILIES["bert"] if model.config.model_type == "mobilebert" else family_of(model.config)
    return tuple(f"{n}." for n in fam.mlm_head)


def position_rows(cfg, n: int) -> slice:
    """The rows of a teacher's position table that positions 0..n-1 read (RoBERTa counts from pad + 1)."""
    start = cfg.pad_token_id + 1 if family_of(cfg).position_offset else 0
    return slice(start, start + n)
