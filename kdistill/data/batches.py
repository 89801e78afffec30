"""Task data -> model inputs: tokenised rows with `labels` and `row` (the position, for teacher-output caches)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset


def row_lengths(ds: Dataset, column: str = "input_ids", batch_rows: int = 65_536) -> np.ndarray:
    """Every row's token count, read from Arrow in batches: a corpus larger than memory stays on disk (no Python
    list of its rows is ever built)."""
    parts = [pc.list_value_length(b[column]).to_numpy(zero_copy_only=False)
             for b in ds.select_columns([column]).with_format("arrow").iter(batch_size=batch_rows)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _fingerprint(ds: Dataset, tokenizer, *settings) -> str:
    """The tokenized dataset's fingerprint, named here: `datasets` would otherwise pickle and hash the tokenizer in
    the mapped function (about 0.6 s a call, most of a small stage's tokenizing). Nothing reads it back: caching is
    off and saved datasets are stamped with their content digest (kdistill.data.store)."""
    parts = (ds._fingerprint, type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer), *settings)
    key = "|".join(map(str, parts))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def tokenize_task(ds: Dataset, tokenizer, max_seq_len: int, doc_stride: int | None = None) -> Dataset:
    """Model inputs for a split: texts (and pairs), words (token classification) or questions cut into windows
    (extractive QA, `doc_stride` tokens shared by consecutive windows: kdistill/data/answers.py)."""
    if "words" in ds.column_names:
        return tokenize_words(ds, tokenizer, max_seq_len)
    if "question" in ds.column_names:
        return tokenize_questions(ds, tokenizer, max_seq_len, doc_stride)
    pair = "sentence2" in ds.column_names

    def enc(batch):
        second = batch["sentence2"] if pair else None
        out = tokenizer(batch["sentence1"], second, truncation=True, max_length=max_seq_len)
        out["labels"] = batch["label"]
        return out

    keep = {"input_ids", "token_type_ids", "labels"}
    # keep_in_memory: never write cache files next to the source dataset (it may be a DVC output)
    ds = ds.map(enc, batched=True, desc="tokenize", keep_in_memory=True,
                new_fingerprint=_fingerprint(ds, tokenizer, "texts", max_seq_len, pair))
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
    return ds.add_column("row", list(range(len(ds))))


# what scoring reads of each row, never a model: token classification's first sub-token of each word and gold tag;
# extractive QA's question row, context offsets, context and gold answers
SCORING_ONLY = ("first", "word_labels", "example", "offsets", "context", "answers")


def tokenize_words(ds: Dataset, tokenizer, max_seq_len: int) -> Dataset:
    """Token classification rows (`words`, `tags` as ids): sub-tokens with each word's tag on its first one
    (kdistill.data.tagged.align), and the columns scoring reads (`first`, `word_labels`)."""
    from kdistill.data.tagged import align, first_subtokens

    def enc(batch):
        out = tokenizer(batch["words"], is_split_into_words=True, truncation=True, max_length=max_seq_len)
        ids = [out.word_ids(i) for i in range(len(batch["words"]))]
        out["labels"] = [align(w, tags) for w, tags in zip(ids, batch["tags"])]
        out["first"] = [first_subtokens(w, len(words)) for w, words in zip(ids, batch["words"])]
        out["word_labels"] = batch["tags"]
        return out

    keep = {"input_ids", "token_type_ids", "labels", *SCORING_ONLY}
    ds = ds.map(enc, batched=True, desc="tokenize", keep_in_memory=True,
                new_fingerprint=_fingerprint(ds, tokenizer, "words", max_seq_len))
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
    return ds.add_column("row", list(range(len(ds))))


def tokenize_questions(ds: Dataset, tokenizer, max_seq_len: int, doc_stride: int | None) -> Dataset:
    """Extractive QA rows (question, context, answers) -> one row per window of the context, with `labels` [start,
    end] and the columns scoring reads (kdistill.data.answers.windows)."""
    from kdistill.data.answers import windows

    if doc_stride is None:
        raise ValueError("extractive QA windows need a doc_stride (the task's, from task.json)")
    ds = ds.map(lambda b: windows(b, tokenizer, max_seq_len, doc_stride), batched=True, desc="windows",
                remove_columns=ds.column_names, keep_in_memory=True,
                new_fingerprint=_fingerprint(ds, tokenizer, "windows", max_seq_len, doc_stride))
    return ds.add_column("row", list(range(len(ds))))


def pad_collate(rows: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad to the longest row of the batch; carry every other column as a tensor (per-token
    labels padded with -100, which every loss ignores)."""
    L = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    types = torch.zeros((len(rows), L), dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        mask[i, :n] = 1
        if "token_type_ids" in r:
            types[i, :n] = torch.tensor(r["token_type_ids"])
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    per_token = "first" in rows[0]  # token classification: one label per sub-token
    for key in rows[0]:
        if key in batch or key in SCORING_ONLY:
            continue
        if key == "labels" and per_token:
            labels = torch.full((len(rows), L), -100, dtype=torch.long)
            for i, r in enumerate(rows):
                labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
            batch[key] = labels
        else:
            batch[key] = torch.tensor([r[key] for r in rows])
    return batch


def epoch_batches(lengths, batch_size: int, seed: int, epoch: int, group: bool = True) -> list[torch.Tensor]:
    """A deterministic batch order for one epoch (a function of seed and epoch alone, so resuming can replay it):
    a list of index tensors (no Python list of every row, for corpora larger than memory).

    Length grouping: shuffle, sort within windows of 50 batches by length (longest first, ties in shuffled order),
    then shuffle the batches, so padding is small but the order stays random.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
    perm = torch.randperm(len(lengths), generator=g)
    if group:
        window = batch_size * 50
        perm = torch.cat([w[torch.sort(-lengths[w], stable=True).indices] for w in perm.split(window)]) if len(perm) else perm
    batches = list(perm.split(batch_size))
    order = torch.randperm(len(batches), generator=g).tolist() if group else range(len(batches))
    return [batches[i] for i in order]
