"""Step 2, augmentation: the train split plus N augmented copies of (the first max_examples) examples.

Methods: `wordnet` (nlpaug synonyms), `tinybert` (the teacher's masked-LM top-K for single-piece words, GloVe
neighbours for multi-piece ones: needs the teacher_mlm stage's model), `none` (the split unchanged). The rate and a
sample of original/augmented pairs go to reports/augment.json (a DVC metric, outside the cached output, so a rerun
that produces the same rows leaves the training stages up to date); the report shows the sample.
"""

import time

from datasets import concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from kdistill.data.splits import first
from kdistill.data.store import save_dataset
from kdistill.errors import KdistillError
from kdistill.io import atomic_dir, write_json_atomic

from .common import cli, setup

SAMPLE_PAIRS = 12


def make_augmenter(p, paths):
    a = p.augment
    if a.method == "wordnet":
        from kdistill.data.augment import WordNetAugmenter

        return WordNetAugmenter(a.aug_p, p.base.seed)
    if a.method == "tinybert":
        from kdistill.data.augment import TinyBertAugmenter

        if not (paths.teacher_mlm / "config.json").is_file():
            raise KdistillError(f"augment.method: tinybert needs the teacher with its masked-LM head at "
                                f"{paths.teacher_mlm}: run the teacher_mlm stage first (make pipeline runs it)")
        return TinyBertAugmenter(str(paths.teacher_mlm), a.aug_p, a.top_k, a.glove_neighbours, p.base.seed, a.batch_size)
    return None


def main() -> None:
    p, paths = setup("augment")
    a = p.augment
    train = first(load_from_disk(str(paths.data / "train")), p.base.max_train_examples, p.base.validation_rows,
                  str(paths.data / "train"))
    src = train.select(range(min(len(train), a.max_examples or len(train))))
    aug = make_augmenter(p, paths)
    copies = a.copies if aug is not None else 0
    text_cols = [c for c in ("sentence1", "sentence2") if c in src.column_names]
    parts, samples = [train], []
    t0, done = time.time(), 0
    with tqdm(total=len(src) * copies, desc=f"augment ({a.method})", unit="sent", disable=not copies) as bar:
        for c in range(1, copies + 1):
            cols = {k: [] for k in src.column_names}
            for s in range(0, len(src), a.batch_size):
                batch = src[s : s + a.batch_size]
                before = {k: list(batch[k]) for k in text_cols}
                for n, k in enumerate(text_cols):  # sentence2 draws from other seeded streams than sentence1
                    batch[k] = aug.augment(batch[k], [i + n * 10_000_000 for i in batch["idx"]], c)
                for j in range(len(batch["idx"])):
                    if len(samples) < SAMPLE_PAIRS:
                        samples.append({"idx": batch["idx"][j], "copy": c,
                                        **{f"{k}_original": before[k][j] for k in text_cols},
                                        **{f"{k}_augmented": batch[k][j] for k in text_cols}})
                for k in cols:
                    cols[k].extend(batch[k])
                bar.update(len(batch["idx"]))
                done += len(batch["idx"])
            parts.append(type(src).from_dict(cols, features=src.features))
    seconds = time.time() - t0
    out = concatenate_datasets(parts)
    rate = done / max(1e-9, seconds)
    changed = sum(any(s[f"{k}_original"] != s[f"{k}_augmented"] for k in text_cols) for s in samples)
    print(f"[augment] {a.method}: {done} augmented sentences in {seconds:.1f}s ({rate:.1f} sentences/s); "
          f"{len(out)} rows in all", flush=True)
    for s in samples[:3]:
        print(f"[augment]   {s['sentence1_original']!r}\n[augment] -> {s['sentence1_augmented']!r}", flush=True)
    with atomic_dir(paths.augmented) as tmp:
        save_dataset(out, tmp / "train")
    write_json_atomic(paths.reports / "augment.json", {
        "method": a.method, "copies": copies, "aug_p": a.aug_p, "original_rows": len(train),
        "augmented_sentences": done, "rows": len(out), "seconds": round(seconds, 1),
        "sentences_per_s": round(rate, 1), "sample_changed": f"{changed}/{len(samples)}", "samples": samples})


if __name__ == "__main__":
    cli(main)
