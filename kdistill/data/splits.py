"""The train, validation and eval splits: the train split shuffled once with the seed, its last
`base.validation_rows` rows held out for checkpoint selection (never trained on), every stage's training rows a prefix
of the rows before them."""

from __future__ import annotations

import random

from kdistill.config import Params
from kdistill.data.glue import glue_task, load_split
from kdistill.data.tables import Columns, check_labels, read_table, resolve_labels, to_dataset, user_task
from kdistill.data.task import Task
from kdistill.errors import KdistillError
from kdistill.paths import ROOT, data_source


def read_user_splits(p: Params):
    """(task, train, dev, test) from the `data` section, every row checked; dev is a seeded held-out share of train
    when no dev file is named (its rows are then never in train)."""
    d = p.data
    if d.kind == "token_classification":
        return _tagged_splits(p)
    if d.kind == "extractive_qa":
        return _question_splits(p)
    cols = Columns(d.text, d.label, d.text_pair)
    train = read_table(ROOT / d.train, cols, d.kind, d.format)
    dev = read_table(ROOT / d.dev, cols, d.kind, d.format) if d.dev else None
    test = read_table(ROOT / d.test, cols, d.kind, d.format) if d.test else None
    labels = resolve_labels(train, d.kind, d.labels)
    for t in (dev, test):
        if t is not None:
            check_labels(t, labels, train.path)
    task = user_task(p.base.task, d.kind, labels, d.metric, d.text_pair is not None)
    train_ds = to_dataset(train, d.kind, labels)
    dev_ds = to_dataset(dev, d.kind, labels) if dev is not None else None
    train_ds, dev_ds = _hold_out(p, train.path, train_ds, dev_ds)
    return task, train_ds, dev_ds, (to_dataset(test, d.kind, labels) if test else None)


def _hold_out(p: Params, train_path, train_ds, dev_ds):
    """(train, dev): dev as given, or a seeded `data.dev_fraction` of train held out (never in train then)."""
    d = p.data
    if dev_ds is not None:
        return train_ds, dev_ds
    order = list(range(len(train_ds)))
    random.Random(d.split_seed).shuffle(order)
    n_dev = max(1, round(len(order) * d.dev_fraction))
    if len(order) - n_dev < 2:
        raise KdistillError(f"{train_path}: {len(order)} rows are too few to hold out data.dev_fraction "
                            f"{d.dev_fraction} as dev; name a dev file (data.dev)")
    return train_ds.select(sorted(order[n_dev:])), train_ds.select(sorted(order[:n_dev]))


def _tagged_splits(p: Params):
    """read_user_splits for token classification: words and tag ids per row, the tag names (train's own, O first,
    or data.labels), the scheme detected in train; a dev or test tag that train never has is refused."""
    from datasets import Dataset, Features, Sequence, Value

    from kdistill.data.tagged import check_known_tags, detect_scheme, read_tagged, tag_names

    d = p.data
    read = lambda f: read_tagged(ROOT / f, d.format, d.text, d.label, d.tag_column)  # noqa: E731
    train = read(d.train)
    found = tag_names(train)
    if d.labels is not None:
        missing = sorted(set(found) - set(d.labels))
        if missing:
            raise KdistillError(f"{ROOT / d.train}: tag {missing[0]!r} is not in data.labels {d.labels}; add it (ids "
                                "follow the list's order)")
    labels = tuple(d.labels) if d.labels is not None else found
    others = {name: read(f) for name, f in (("dev", d.dev), ("test", d.test)) if f}
    for name, rows in others.items():
        check_known_tags(ROOT / getattr(d, name), rows, set(labels), ROOT / d.train)
    task = user_task(p.base.task, d.kind, labels, d.metric, False, detect_scheme(train))
    ids = {t: i for i, t in enumerate(labels)}
    features = Features({"idx": Value("int64"), "words": Sequence(Value("string")), "tags": Sequence(Value("int64"))})

    def dataset(rows):
        return Dataset.from_dict({"idx": list(range(len(rows))), "words": [list(r.words) for r in rows],
                                  "tags": [[ids[t] for t in r.tags] for r in rows]}, features=features)

    train_ds, dev_ds = _hold_out(p, ROOT / d.train, dataset(train), dataset(others["dev"]) if "dev" in others else None)
    return task, train_ds, dev_ds, (dataset(others["test"]) if "test" in others else None)


def _question_splits(p: Params):
    """read_user_splits for extractive QA: a row per question (its id, question, context, answer texts and starts);
    a held-out dev share is taken by context, so no dev question reads a paragraph that train has."""
    from datasets import Dataset, Features, Sequence, Value

    from kdistill.data.answers import read_answers

    d = p.data
    read = lambda f: read_answers(ROOT / f, d.format)  # noqa: E731
    features = Features({"idx": Value("int64"), "id": Value("string"), "question": Value("string"),
                         "context": Value("string"), "answer_texts": Sequence(Value("string")),
                         "answer_starts": Sequence(Value("int64"))})

    def dataset(rows):
        return Dataset.from_dict({"idx": list(range(len(rows))), "id": [q.id for q in rows],
                                  "question": [q.question for q in rows], "context": [q.context for q in rows],
                                  "answer_texts": [list(q.texts) for q in rows],
                                  "answer_starts": [list(q.starts) for q in rows]}, features=features)

    train = read(d.train)
    stride = d.doc_stride or p.base.max_seq_len // 4
    task = user_task(p.base.task, d.kind, None, d.metric, True, doc_stride=stride, max_answer_len=d.max_answer_len)
    dev = read(d.dev) if d.dev else None
    if dev is None:  # hold out whole contexts: questions on one paragraph share most of their answer evidence
        contexts = list(dict.fromkeys(q.context for q in train))
        random.Random(d.split_seed).shuffle(contexts)
        held = set(contexts[: max(1, round(len(contexts) * d.dev_fraction))])
        if len(held) == len(contexts):
            raise KdistillError(f"{ROOT / d.train}: {len(contexts)} contexts are too few to hold out "
                                f"data.dev_fraction {d.dev_fraction} of them as dev; name a dev file (data.dev)")
        dev = [q for q in train if q.context in held]
        train = [q for q in train if q.context not in held]
    test = read(d.test) if d.test else None
    return task, dataset(train), dataset(dev), (dataset(test) if test else None)


def data_description(p: Params) -> str:
    """Where the task's rows come from, for model cards: "GLUE sst2" or the user's train file."""
    return f"GLUE {p.base.task}" if p.data.train is None else f"{p.base.task} ({p.data.train})"


def resolve_task(p: Params) -> Task:
    """The task the params describe (reads the user's train labels when data.labels does not state them)."""
    if p.data.train is None:
        return glue_task(p.base.task)
    return read_user_splits(p)[0]


def load_task_splits(p: Params):
    """(task, the train split shuffled once with the seed (so any prefix is a random subset), the eval split)."""
    if p.data.train is None:
        task = glue_task(p.base.task)
        train = load_split(data_source(p), p.base.task, "train")
        evaluated = load_split(data_source(p), p.base.task, p.base.eval_split)
    else:
        task, train, dev, test = read_user_splits(p)
        evaluated = {"train": train, "dev": dev, "test": test}[p.base.eval_split]
    train = train.shuffle(seed=p.base.seed, keep_in_memory=True)
    return task, train.flatten_indices(keep_in_memory=True), evaluated


def first(ds, n: int | None, holdout: int = 0, source: str = "the train split"):
    """The first n rows (all when n is None) of those before the last `holdout` rows (the validation rows, see
    `validation_rows`): a random subset, as prepare shuffled the split."""
    usable = len(ds) - holdout
    if usable < 1:
        raise KdistillError(f"base.validation_rows: {holdout} leaves no training rows in {source} ({len(ds)} rows); "
                            f"use fewer (0: no checkpoint selection, the last state is kept)")
    n = usable if n is None else min(n, usable)
    return ds if n == len(ds) else ds.select(range(n))


def validation_rows(ds, rows: int):
    """The last `rows` rows of the (shuffled) train split, which no stage trains on (`first` leaves them out):
    training stages select their best checkpoint on them, so the eval split is scored once, never chosen on. None
    when rows is 0 (no selection)."""
    if rows == 0:
        return None
    if rows >= len(ds):  # first() names the problem first in every stage; this is the same check for direct callers
        raise KdistillError(f"base.validation_rows: {rows} is not less than the {len(ds)} rows of the train split")
    return ds.select(range(len(ds) - rows, len(ds)))


def shared_rows(train, other) -> int:
    """Rows of `other` whose text (and pair) also occurs in train: a dev score on them measures memory, not skill."""
    def keys(ds):
        if "question" in ds.column_names:
            return list(zip(ds["question"], ds["context"]))
        if "words" in ds.column_names:
            return [tuple(w) for w in ds["words"]]
        pair = ds["sentence2"] if "sentence2" in ds.column_names else [None] * len(ds)
        return list(zip(ds["sentence1"], pair))

    seen = set(keys(train))
    return sum(k in seen for k in keys(other))
