"""Datasets saved so that the same rows give the same bytes: DVC then sees an unchanged output as unchanged.

`datasets` stamps a saved dataset with a fingerprint that is random when caching is off (every step turns it off:
its inputs are DVC outputs that must stay untouched) and with a split name that depends on how many processes
built it. Both are replaced by what the rows are: the digest of the Arrow files and no split name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datasets import Dataset


def save_dataset(ds: Dataset, path: str | Path) -> None:
    """save_to_disk into `path` (inside the caller's atomic directory), in one shard, with a content fingerprint."""
    path = Path(path)
    ds.save_to_disk(str(path), num_shards=1)  # writes the selected rows when `ds` has an indices mapping
    state_file = path / "state.json"
    state = json.loads(state_file.read_text())
    digest = hashlib.sha256()
    for f in sorted(path.glob("*.arrow")):
        digest.update(f.read_bytes())
    state["_fingerprint"] = digest.hexdigest()[:16]
    state["_split"] = None
    state_file.write_text(json.dumps(state, indent=2, sort_keys=True))
