"""The encoder families a teacher may come from: what each recipe needs of one, declared once per family.

Every recipe reads the same parts of an encoder, through the `Family` entry of its config's `model_type`:
- its layers (a module list under the bare encoder) and what feeds the first one (the embedding output);
- each layer's self-attention module, its query/key/value projections (MiniLM's relations) and how its attention
  scores are seen: through transformers' attention interface (`interface`: the engine's own attention function
  records Q.K^T x scaling) or, for families that form their scores inside the module (`softmax`: DeBERTa's
  disentangled attention, MPNet's relative bias), as the input of the one softmax the module computes, so the
  scores distilled are the model's own, relative-position terms included;
- its masked-LM head, the config fields that give a student its shape, its position and token-type conventions,
  and the names of the weights that teacher initialisation copies (kdistill/student_init.py).
Students are built in the teacher's own family from its config. Adding a family is one entry here plus its tests.
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
    layers: str = "encoder.layer"  # the layer list, under the bare encoder
    embedding_out: tuple[str, ...] = ("embeddings_project", "embeddings")  # the first that exists feeds layer 1
    attention: str = "attention.self"  # the self-attention module, under a layer
    qkv: tuple[str, ...] = ("query", "key", "value")  # its projections; one name: a fused [Q; K; V] projection
    scores: str = "interface"  # how the attention scores are seen: `interface` or `softmax` (see the module doc)
    token_types: bool = True  # the encoder reads token_type_ids
    # config fields of a student's shape (the reading side: every config answers hidden_size & co.)
    ffn_field: str = "intermediate_size"
    act_field: str = "hidden_act"
    # a student's config: `fields` builds it from the teacher's vocabulary fields (the original four families, whose
    # saved students must stay byte-identical); `copy` takes the teacher's whole config and sets the shape
    student_config: str = "fields"
    # teacher initialisation: (module name suffix, output axis, input axis), first match wins (student_init.py)
    init_rules: tuple[tuple[str, str, str], ...] = ()


_BERT_INIT = (
    ("attention.self.query", "attn", "hid"), ("attention.self.key", "attn", "hid"),
    ("attention.self.value", "attn", "hid"), ("attention.output.dense", "hid", "attn"),
    ("intermediate.dense", "ffn", "hid"), ("output.dense", "hid", "ffn"), ("pooler.dense", "hid", "hid"),
    ("_embeddings", "all", "emb"), ("embeddings.LayerNorm", "emb", "all"), ("embeddings_project", "hid", "emb"),
    ("LayerNorm", "hid", "all"),
)

FAMILIES = {
    "bert": Family("BERT", ("cls",), init_rules=_BERT_INIT),
    "roberta": Family("RoBERTa", ("lm_head",), position_offset=True, init_rules=_BERT_INIT),
    "xlm-roberta": Family("XLM-RoBERTa", ("lm_head",), position_offset=True, init_rules=_BERT_INIT),
    "electra": Family("ELECTRA", ("generator_predictions", "generator_lm_head"), init_rules=_BERT_INIT),
    "distilbert": Family(
        "DistilBERT", ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
        layers="transformer.layer", embedding_out=("embeddings",), attention="attention",
        qkv=("q_lin", "k_lin", "v_lin"), token_types=False, ffn_field="hidden_dim", act_field="activation",
        student_config="copy",
        init_rules=(("attention.q_lin", "attn", "hid"), ("attention.k_lin", "attn", "hid"),
                    ("attention.v_lin", "attn", "hid"), ("attention.out_lin", "hid", "attn"),
                    ("ffn.lin1", "ffn", "hid"), ("ffn.lin2", "hid", "ffn"), ("_embeddings", "all", "emb"),
                    ("embeddings.LayerNorm", "emb", "all"), ("layer_norm", "hid", "all"))),
    "deberta-v2": Family(
        "DeBERTa-v2/v3", ("cls",), attention="attention.self", qkv=("query_proj", "key_proj", "value_proj"),
        scores="softmax", student_config="copy",
        init_rules=(("attention.self.query_proj", "attn", "hid"), ("attention.self.key_proj", "attn", "hid"),
                    ("attention.self.value_proj", "attn", "hid"), ("attention.self.pos_key_proj", "attn", "hid"),
                    ("attention.self.pos_query_proj", "attn", "hid"), *_BERT_INIT[3:6],
                    ("encoder.rel_embeddings", "all", "hid"), ("embeddings.embed_proj", "hid", "emb"),
                    *_BERT_INIT[5:])),
    "modernbert": Family(
        "ModernBERT", ("head", "decoder"), layers="layers", embedding_out=("embeddings",), attention="attn",
        qkv=("Wqkv",), token_types=False, act_field="hidden_activation", student_config="copy",
        init_rules=(("attn.Wqkv", "qkv", "hid"), ("attn.Wo", "hid", "attn"), ("mlp.Wi", "glu", "hid"),
                    ("mlp.Wo", "hid", "ffn"), ("tok_embeddings", "all", "emb"), ("embeddings.norm", "emb", "all"),
                    ("norm", "hid", "all"), ("head.dense", "hid", "hid"))),
    "mpnet": Family(
        "MPNet", ("lm_head",), position_offset=True, attention="attention.attn", qkv=("q", "k", "v"),
        scores="softmax", token_types=False, student_config="copy",
        init_rules=(("attention.attn.q", "attn", "hid"), ("attention.attn.k", "attn", "hid"),
                    ("attention.attn.v", "attn", "hid"), ("attention.attn.o", "hid", "attn"),
                    ("encoder.relative_attention_bias", "all", "heads"), *_BERT_INIT[4:])),
}


def family_of(cfg, what: str = "teacher") -> Family:
    kind = getattr(cfg, "model_type", None)
    if kind in FAMILIES:
        return FAMILIES[kind]
    runs = ", ".join(f.name for f in FAMILIES.values())
    raise FamilyError(f"{what} is a {kind!r} model: no recipe runs on it because it is not one of the encoder "
                      f"families the engine reads; recipes run on {runs} teachers")


def layout_of(cfg, what: str = "model") -> Family:
    """The family entry that describes a model's modules: its family's, or BERT's for the MobileBERT-style student
    (MobileBERT lays out its layers, attention and MLM head as BERT does)."""
    return FAMILIES["bert"] if getattr(cfg, "model_type", None) == "mobilebert" else family_of(cfg, what)


def _family(model: nn.Module) -> Family:
    return layout_of(model.config, type(model).__name__)


def mlm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The masked-LM head of a *ForMaskedLM model applied to encoder outputs (selected positions only, typically)."""
    if getattr(model, "lm_predictions", None) is not None:  # DeBERTa-v2's non-legacy head reads the word embeddings
        return model.lm_predictions(hidden, model.get_input_embeddings())
    for name in _family(model).mlm_head:
        hidden = getattr(model, name)(hidden)
    return hidden


def mlm_head_prefixes(model: nn.Module) -> tuple[str, ...]:
    if getattr(model, "lm_predictions", None) is not None:
        return ("lm_predictions.",)
    return tuple(f"{n}." for n in _family(model).mlm_head)


def position_rows(cfg, n: int) -> slice:
    """The rows of a teacher's position table that positions 0..n-1 read (RoBERTa counts from pad + 1)."""
    start = cfg.pad_token_id + 1 if family_of(cfg).position_offset else 0
    return slice(start, start + n)


def layers_of(encoder: nn.Module) -> nn.ModuleList:
    """The layer list of a bare encoder."""
    return encoder.get_submodule(layout_of(encoder.config).layers)


def embedding_output(encoder: nn.Module) -> nn.Module:
    """The module whose output the first layer reads (ELECTRA projects its embeddings to the layers' width)."""
    for name in layout_of(encoder.config).embedding_out:
        mod = getattr(encoder, name, None)
        if mod is not None:
            return mod
    raise FamilyError(f"{type(encoder).__name__} has none of {layout_of(encoder.config).embedding_out}")


def attention_modules(encoder: nn.Module) -> list[nn.Module]:
    """Each layer's self-attention module, in layer order."""
    fam = layout_of(encoder.config)
    return [layer.get_submodule(fam.attention) for layer in layers_of(encoder)]


def ffn_size(cfg) -> int | None:
    """The FFN width of a model of any family (DistilBERT calls it hidden_dim)."""
    if getattr(cfg, "model_type", None) in FAMILIES:
        return getattr(cfg, family_of(cfg).ffn_field, None)
    return getattr(cfg, "intermediate_size", None)


def reads_token_types(model: nn.Module) -> bool:
    kind = model.config.model_type
    return kind not in FAMILIES or FAMILIES[kind].token_types
