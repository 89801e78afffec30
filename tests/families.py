"""Tiny random teachers of every family the engine reads, with tokenizers built offline (no hub)."""

from __future__ import annotations

import json

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertTokenizerFast,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ElectraTokenizerFast,
    ModernBertConfig,
    MPNetConfig,
    RobertaConfig,
    RobertaTokenizerFast,
    XLMRobertaConfig,
)

from .conftest import WORDS

FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert", "mpnet")
SENTENCES = ["the movie was good", "a boring plot and a dull actor", "the best scene of the film", "not funny at all",
             "i love this story", "the worst ride", "great fun but very long", "it is a film"]


def tokenizer(family: str, tmp):
    if family in ("roberta", "xlm-roberta"):
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(SENTENCES * 4 + [" ".join(WORDS)], vocab_size=300, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        tmp.mkdir(parents=True, exist_ok=True)
        bpe.save_model(str(tmp))
        # vocab_file= silently builds a 5-token tokenizer in transformers 5: pass the vocabulary and merges themselves
        vocab = json.loads((tmp / "vocab.json").read_text())
        merges = [tuple(m.split()) for m in (tmp / "merges.txt").read_text().splitlines()[1:] if m.strip()]
        return RobertaTokenizerFast(vocab=vocab, merges=merges)
    words = dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "i", "at", "all", "long"])
    vocab = {t: i for i, t in enumerate(words)}
    cls = ElectraTokenizerFast if family == "electra" else BertTokenizerFast
    return cls(vocab=vocab, do_lower_case=True)


def config(family: str, tok, layers=2, hidden=32, heads=4, ffn=64, **kw):
    shape = dict(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                 intermediate_size=ffn, max_position_embeddings=80, pad_token_id=tok.pad_token_id, **kw)
    if family == "bert":
        return BertConfig(**shape)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=len(tok), dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=ffn,
                                max_position_embeddings=80, pad_token_id=tok.pad_token_id, **kw)
    if family == "deberta-v2":  # as DeBERTa-v3: relative attention both ways, shared keys, no absolute positions
        return DebertaV2Config(relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                               position_buckets=16, max_relative_positions=32, type_vocab_size=0, share_att_key=True,
                               norm_rel_ebd="layer_norm", **shape)
    if family == "modernbert":  # one global and one sliding-window (8 tokens) layer, rotary positions
        return ModernBertConfig(global_attn_every_n_layers=2, local_attention=8, cls_token_id=tok.cls_token_id,
                                sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                                eos_token_id=tok.sep_token_id, **shape)
    if family == "mpnet":
        return MPNetConfig(**shape)
    if family == "electra":
        return ElectraConfig(embedding_size=16, **shape)
    cls = RobertaConfig if family == "roberta" else XLMRobertaConfig
    return cls(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, type_vocab_size=1, **shape)


def save_teacher(family: str, out, kind: str = "base", seed: int = 0, **cfg_kw):
    """A tiny random teacher directory (safetensors + tokenizer): `mlm` with an MLM head, `seq` a classifier."""
    tok = tokenizer(family, out / "_tok")
    torch.manual_seed(seed)
    cfg = config(family, tok, **cfg_kw)
    cls = AutoModelForMaskedLM if kind == "mlm" else AutoModelForSequenceClassification
    model = cls.from_config(cfg).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok
