"""Augmentation speed: sentences/s of each method on the first N rows of the prepared train split, and the share of
sentences it changed. `make bench-augment` (ROWS=300 THREADS=1); needs `outputs/data` and, for tinybert,
`outputs/teacher_mlm` (make pipeline makes both)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from datasets import load_from_disk

from kdistill.data.augment import GloveNeighbours, TinyBertAugmenter, WordNetAugmenter

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--outputs", default=str(ROOT / "outputs"))
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--aug-p", type=float, default=0.3)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.outputs)
    train = load_from_disk(str(out / "data" / "train"))
    rows = train.select(range(min(args.rows, len(train))))
    texts, idx = list(rows["sentence1"]), list(rows["idx"])
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s), {len(texts)} sentences")
    makers = {"wordnet": lambda: WordNetAugmenter(args.aug_p, 42)}
    if (out / "teacher_mlm" / "config.json").is_file():
        makers["tinybert"] = lambda: TinyBertAugmenter(str(out / "teacher_mlm"), args.aug_p, 15, 15, 42,
                                                       args.batch_size, glove=GloveNeighbours())
    for name, make in makers.items():
        aug = make()  # loading (WordNet, the MLM, GloVe) is not timed: it happens once per stage
        t = time.perf_counter()
        new = aug.augment(texts, idx, 1)
        secs = time.perf_counter() - t
        changed = sum(a.split() != b.split() for a, b in zip(texts, new))
        print(f"{name:9s} {len(texts) / secs:8.1f} sentences/s   changed {changed}/{len(texts)}   "
              f"e.g. {texts[0].strip()!r} -> {new[0]!r}")


if __name__ == "__main__":
    main()
