"""Checkpoint selection rows: held out at the end of the shuffled train split, never trained on."""

import pytest
from datasets import Dataset

from kdistill.data.splits import first, validation_rows
from kdistill.errors import KdistillError


def _rows(n):
    return Dataset.from_dict({"idx": list(range(n)), "sentence1": [f"s{i}" for i in range(n)], "label": [i % 2 for i in range(n)]})


def test_training_rows_never_include_the_validation_rows():
    ds = _rows(50)
    val = validation_rows(ds, 10)
    assert val["idx"] == list(range(40, 50))
    for n in (None, 5, 40, 45, 1000):  # a share larger than what is left stops before the validation rows
        train = first(ds, n, 10)
        assert not set(train["idx"]) & set(val["idx"]), n
        assert len(train) == min(n or 40, 40)
    assert first(ds, None, 0)["idx"] == list(range(50))  # no holdout: the whole split, as before
    assert validation_rows(ds, 0) is None  # 0: no selection


def test_a_holdout_that_leaves_no_training_rows_is_refused_naming_the_key_and_the_file():
    with pytest.raises(KdistillError, match=r"base.validation_rows: 8 leaves no training rows in data/train \(8 rows\)"):
        first(_rows(8), 4, 8, "data/train")
    with pytest.raises(KdistillError, match="base.validation_rows: 8 is not less than the 8 rows"):
        validation_rows(_rows(8), 8)
