"""Task data -> model inputs: tokenised rows with `labels` and `row` (the position, for teacher-output caches)."""

from __future__ import annotations

from datasets import Dataset

from .glue import get_task


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

