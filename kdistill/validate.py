"""Checks that need more than the schema: the teacher's shape and the data on disk. Run before any long work."""

from __future__ import annotations

from pathlib import Path

from kdistill.config import Params, ParamsError
from kdistill.data.glue import DataError, check_split_available, glue_task
from kdistill.data.splits import read_user_splits
from kdistill.data.task import Task
from kdistill.families import ffn_size
from kdistill.general_start import check_start, own_tokenizer, start_config
from kdistill.models import ModelSpecError, load_tokenizer, teacher_config
from kdistill.recipes import RECIPES
from kdistill.recipes.baseline import teacher_initialised
from kdistill.schema import params_key
from kdistill.teacher_head import plan


def check_against_teacher(p: Params, teacher_layers: int, teacher_heads: int, teacher_hidden: int,
                          teacher_ffn: int | None = None) -> None:
    """Each recipe's own checks of its params against the teacher's shape (kdistill/recipes/<name>.py)."""
    for name in p.base.recipes:  # a recipe left out of base.recipes builds no student: nothing to check
        recipe = RECIPES[name]
        if getattr(p.general_distill, name).from_ is None:  # a student given with `from` has its own shape
            recipe.check_teacher(p, teacher_layers, teacher_heads, teacher_hidden, teacher_ffn)
        if name in p.task_distill.teacher_init_controls and (q := teacher_initialised(p, name)) is not p:
            try:  # the control copies the teacher's weights into the recipe's shape even where init is random
                recipe.check_teacher(q, teacher_layers, teacher_heads, teacher_hidden, teacher_ffn)
            except ParamsError as exc:
                raise ParamsError(f"{exc} (task_distill.teacher_init_controls builds the {name} student from the "
                                  f"teacher's weights: fit the shape to the teacher, or leave {name} out of it)") from None


def check_starts(p: Params, teacher_cfg) -> None:
    """Each general student given with general_distill.<recipe>.from fits the teacher and its recipe; one that
    brings a tokenizer of its own (another vocabulary) learns from soft labels, where its recipe allows it."""
    teacher_vocab = None
    for name in p.base.recipes:
        src = getattr(p.general_distill, name).from_
        if src is not None:
            with params_key(f"general_distill.{name}.from"):
                if teacher_vocab is None:
                    teacher_vocab = load_tokenizer(p.base.teacher).get_vocab()
                own = own_tokenizer(src)
                check_start(name, start_config(src, p.base.allow_pickle_weights), teacher_cfg, p,
                            cross_vocab=own is not None and own.get_vocab() != teacher_vocab)


def check_teacher(p: Params, task: Task) -> None:
    try:
        cfg = teacher_config(p.base.teacher, p.base.allow_pickle_weights)
    except (ModelSpecError, OSError) as exc:
        raise ParamsError(f"params.yaml: key 'base.teacher': {exc}") from None
    check_against_teacher(p, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size,
                          ffn_size(cfg))
    check_starts(p, cfg)
    plan(cfg, task, p.teacher_finetune.mode, p.base.teacher)  # a head that names other labels: refused now


def check_tokenizer(p: Params, samples: list[tuple[list[str], str]]) -> None:
    """The teacher's tokenizer turns text into tokens: each sample (texts, where they come from) gives at least one.
    A tokenizer built the old way from file paths under transformers 5 can come out with a handful of entries that
    map every word to nothing; every stage would then train on [CLS] [SEP] and fail far from the cause."""
    samples = [([t for t in texts if t.strip()], where) for texts, where in samples]
    samples = [(texts, where) for texts, where in samples if texts]
    if not samples:
        return
    try:
        tok = load_tokenizer(p.base.teacher)
    except (OSError, ValueError) as exc:
        raise ParamsError(f"params.yaml: key 'base.teacher': its tokenizer does not load: {exc}") from None
    for texts, where in samples:
        if not any(tok(texts, add_special_tokens=False)["input_ids"]):
            raise ParamsError(
                f"params.yaml: key 'base.teacher': the tokenizer of {p.base.teacher} turns {where} into 0 tokens "
                f"(its vocabulary has {len(tok)} entries); save the teacher's own tokenizer beside it "
                "(tokenizer.save_pretrained(dir) writes tokenizer.json)")


def _first_texts(p: Params, root: Path) -> tuple[list[str], str]:
    """A few texts to tokenise before any work: the first corpus document, else nothing."""
    from kdistill.data.corpus import read_documents

    for doc in read_documents(root / p.prepare.corpus):
        return doc[:5], f"the first document of {p.prepare.corpus}"
    return [], ""


def check_data(p: Params, root: str | Path = ".") -> Task:
    """The task the params describe, every row of the user's files checked; GLUE presets: the splits exist."""
    return _check_data(p, root)[0]


def _check_data(p: Params, root: str | Path) -> tuple[Task, list[str], str]:
    """check_data, with the first texts of the user's train file (for the tokenizer check) and where they are from."""
    corpus = Path(root) / p.prepare.corpus
    if not corpus.is_file():
        raise ParamsError(f"params.yaml: key 'prepare.corpus': {corpus} does not exist (paragraph-per-line text)")
    if p.data.train is not None:
        for key in ("train", "dev", "test"):
            name = getattr(p.data, key)
            if name is not None and not (Path(root) / name).exists():
                raise ParamsError(f"params.yaml: key 'data.{key}': {Path(root) / name} does not exist")
        task, train, dev, test = read_user_splits(p)
        head = train.select(range(min(5, len(train))))
        if task.is_span:  # every question must leave its windows room to advance, under the teacher's tokenizer
            from kdistill.data.answers import check_room
            from kdistill.models import load_tokenizer

            tok = load_tokenizer(p.base.teacher)
            for name, ds in (("train", train), ("dev", dev), ("test", test)):
                if ds is not None:
                    check_room(ds["question"], ds["id"], tok, p.base.max_seq_len, task.doc_stride,
                               f"{Path(root) / (getattr(p.data, name) or p.data.train)}: ")
            return task, head["question"], f"the first questions of {p.data.train}"
        texts = [" ".join(w) for w in head["words"]] if task.is_token_level else head["sentence1"]
        return task, texts, f"the first rows of {p.data.train} (column {p.data.text!r})"
    src = p.base.data_dir
    local = Path(root) / src
    if local.is_dir():
        src = str(local)
    elif "/" not in src or src.startswith((".", "/")):  # not a local directory, and not a hub name like glue/sst2
        raise ParamsError(f"params.yaml: key 'base.data_dir': {local} is not a directory (expected a GLUE tsv root)")
    for key, split in (("base.task", "train"), ("base.eval_split", p.base.eval_split)):
        try:
            check_split_available(src, p.base.task, split)
        except DataError as exc:
            raise ParamsError(f"params.yaml: key '{key}': {exc}") from None
    return glue_task(p.base.task), [], ""


def check_all(p: Params, root: str | Path = ".") -> None:
    """Everything that can be checked without training: params against the data on disk (every row), the teacher's
    family, shape and head against the recipes and the labels, and its tokenizer against the texts. Run by every
    stage, and by `make pipeline` before its Prefect server starts."""
    task, texts, where = _check_data(p, root)
    check_teacher(p, task)
    check_tokenizer(p, [(texts, where), _first_texts(p, Path(root))])
