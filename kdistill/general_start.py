"""Start from a general student someone already distilled (`general_distill.<recipe>.from`), skipping general
distillation: a local directory or a hub id (TinyBERT-4, MiniLM, ...). Its shape is read from its config and
checked against the teacher and the recipe's task stage before any work; the general stage then saves it, with the
teacher's tokenizer, where the task stage reads its general student.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoTokenizer

from kdistill import recipes
from kdistill.errors import KdistillError
from kdistill.models import check_model_dir, load_model, resolve_teacher


class GeneralStartError(KdistillError, ValueError):
    pass


def start_config(src: str, allow_pickle: bool = False):
    """The config of a general student to start from (local directory, or hub id: needs the network or the cache)."""
    path = resolve_teacher(src)  # the same rules as a teacher: local directory, offline package or hub id
    check_model_dir(path, allow_pickle)
    try:
        return AutoConfig.from_pretrained(path)
    except OSError as exc:
        raise GeneralStartError(f"{src}: no model config there ({str(exc).splitlines()[0]}); give a directory saved "
                                "with save_pretrained, or a hub id with the network or a populated cache") from None


def own_tokenizer(src: str):
    """The tokenizer saved beside a general student, or None when it has none of its own."""
    path = Path(resolve_teacher(src))
    if not path.is_dir() or not any(path.glob("tokenizer*")) and not any(path.glob("vocab.*")):
        return None
    return AutoTokenizer.from_pretrained(path)


def check_start(recipe: str, s_cfg, t_cfg, p, cross_vocab: bool = False) -> None:
    """A general student fits its recipe's task stage: the family the recipe builds (STUDENT_MODEL_TYPE, else the
    teacher's) and the teacher's vocabulary here; what the recipe's task losses compare, in the recipe's own
    check_start (TinyBERT's layer map and heads, MobileBERT's block width).

    `cross_vocab`: the student brings a tokenizer of its own. Then it learns from the teacher's soft labels alone,
    which the recipe's task stage must allow (token_level_task), and it may be of any family the engine reads."""
    from kdistill.families import FAMILIES

    module = recipes.get(recipe)
    want = getattr(module, "STUDENT_MODEL_TYPE", None) or t_cfg.model_type
    if cross_vocab:
        if p.data.kind in ("token_classification", "extractive_qa"):
            what = {"token_classification": "token classification distils one soft target per sub-token",
                    "extractive_qa": "extractive QA distils start and end distributions over the sub-tokens"}[p.data.kind]
            raise GeneralStartError(f"it tokenizes with its own vocabulary ({s_cfg.vocab_size} tokens; the teacher's "
                                    f"has {t_cfg.vocab_size}), and {what} of the teacher's tokenization, which "
                                    "another vocabulary does not share; give a student with the teacher's vocabulary")
        reason = module.token_level_task(p)
        if reason:
            raise GeneralStartError(f"it tokenizes with its own vocabulary ({s_cfg.vocab_size} tokens; the teacher's "
                                    f"has {t_cfg.vocab_size}), and the {recipe} recipe cannot distil across "
                                    f"vocabularies: {reason}; give such a student to the distilbert or minilm recipe")
        allowed = [want] if getattr(module, "STUDENT_MODEL_TYPE", None) else list(FAMILIES)
        if s_cfg.model_type not in allowed:
            raise GeneralStartError(f"it is a {s_cfg.model_type!r} model; the {recipe} recipe needs one of "
                                    f"{', '.join(allowed)}")
        return
    if s_cfg.model_type != want:
        raise GeneralStartError(f"it is a {s_cfg.model_type!r} model; the {recipe} recipe needs a {want!r} student "
                                f"(the teacher is {t_cfg.model_type!r}), or one that brings its own tokenizer")
    if s_cfg.vocab_size != t_cfg.vocab_size:
        raise GeneralStartError(f"its vocabulary has {s_cfg.vocab_size} tokens, the teacher's {t_cfg.vocab_size}: "
                                "the task stage feeds both the same token ids, so the student needs the teacher's "
                                "vocabulary, or its own tokenizer saved beside it (then it learns from soft labels)")
    if hasattr(module, "check_start"):
        module.check_start(p, s_cfg, t_cfg)


def load_start(src: str, vocab: dict | None = None, allow_pickle: bool = False):
    """(the general student's encoder, loaded safely; its own tokenizer when that tokenizes differently from the
    teacher's `vocab`, else None)."""
    own = own_tokenizer(src) if vocab is not None else None
    if own is not None and own.get_vocab() == vocab:
        own = None
    return load_model(AutoModel, resolve_teacher(src), allow_pickle), own
