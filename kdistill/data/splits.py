"""The train, validation and eval splits: the train split shuffled once with the seed, its last
`base.validation_rows` rows held out for checkpoint selection (never trained on), every stage's training rows a prefix
of the rows before them."""

from __future__ import annotations

from kdistill.config import Params
from kdistill.data.glue import load_split
from kdistill.errors import KdistillError
from kdistill.paths import data_source


def load_task_splits(p: Params):
    """The train split shuffled once with the seed (so any prefix is a random subset) and the eval split."""
    train = load_split(data_source(p), p.base.task, "train").shuffle(seed=p.base.seed, keep_in_memory=True)
    return train.flatten_indices(keep_in_memory=True), load_split(data_source(p), p.base.task, p.base.eval_split)


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
