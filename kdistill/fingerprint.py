"""Content digests of models and datasets: what a checkpoint or a cache entry was made from.

Keys built from the content itself (not from paths or settings) mean that a changed teacher, a re-made student or
new data can never pick up state left by an earlier run.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn


def module_digest(module: nn.Module) -> str:
    """sha256 of every tensor in the state dict, with its name and dtype (about 0.08 s for a 20M-parameter model:
    the bytes are hashed where they lie, without a float copy)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def dataset_digest(dataset, columns=("input_ids", "token_type_ids", "labels"), batch_rows: int = 65_536) -> str:
    """sha256 of the named columns that the dataset has, in row order: the JSON text of each column's list of
    values, fed in batches so that a corpus larger than memory is never held whole."""
    h = hashlib.sha256()
    for col in columns:
        if col in dataset.column_names:
            h.update(col.encode())
            h.update(b"[")
            first = True
            for batch in dataset.select_columns([col]).with_format("arrow").iter(batch_size=batch_rows):
                values = batch[col].to_pylist()
                if not values:
                    continue
                h.update((b"" if first else b", ") + json.dumps(values)[1:-1].encode())
                first = False
            h.update(b"]")
    return h.hexdigest()
