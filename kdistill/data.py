"""Task data -> model inputs: tokenised rows with `labels` and `row` (the position, for teacher-output caches)."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset

from .glue import get_task


def row_lengths(ds: Dataset, column: str = "input_ids", batch_rows: int = 65_536) -> np.ndarray:
    """Every row's token count, read from Arrow in batches: a corpus larger than memory stays on disk (no Python
    list of its rows is ever built)."""
    parts = [pc.list_value_length(b[column]).to_numpy(zero_copy_only=False)
             for b in ds.select_columns([column]).with_format("arrow").iter(batch_size=batch_rows)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def tokenize_task(ds: Dataset, tokenizer, task: str, max_seq_len: int) -> Dataset:
    spec = get_task(task)

    def enc(batch):
        second = batch["sentence2"] if spec.is_pair else None
        out = tokenizer(batch["sentence1"], second, truncation=True, max_length=max_seq_len)
        out["labels"] = batch["label"]
        return out

    keep = {"input_ids", "token_type_ids", "labels"}
    # keep_in_memory: never write cache files next to the source dataset (it may be a DVC output)
    ds = ds.map(enc, batched=True, desc="tokenize", keep_in_memory=True)
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
    return ds.add_column("row", list(range(len(ds))))

