"""Step 2, synonym augmentation: the train split plus N augmented copies of (the first max_examples) examples."""

import time

from datasets import concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from kdistill.io import atomic_dir, write_json_atomic

from .common import cli, first, setup


def main() -> None:
    p, paths = setup("augment")
    a = p.augment
    train = first(load_from_disk(str(paths.data / "train")), p.base.max_train_examples)
    src = train.select(range(min(len(train), a.max_examples or len(train))))
    if a.method == "wordnet":
        from kdistill.augment import WordNetAugmenter

        aug = WordNetAugmenter(a.aug_p, p.base.seed)
    elif a.method == "tinybert":
        from kdistill.augment import TinyBertAugmenter

        if not paths.teacher_mlm.is_dir():
            raise FileNotFoundError(f"augment.method=tinybert needs the teacher MLM head at {paths.teacher_mlm} (general_distill@distilbert)")
        aug = TinyBertAugmenter(str(paths.teacher_mlm), a.aug_p, a.top_k, a.glove_neighbours, p.base.seed, a.batch_size)
    else:
        aug = None
    parts = [train]
    t0, done = time.time(), 0
    if aug is not None and a.copies:
        bar = tqdm(total=len(src) * a.copies, desc="augment", unit="sent")
        for c in range(1, a.copies + 1):
            cols = {k: [] for k in src.column_names}
            for s in range(0, len(src), a.batch_size):
                batch = src[s : s + a.batch_size]
                batch["sentence1"] = aug.augment(batch["sentence1"], batch["idx"], c)
                if "sentence2" in batch:
                    batch["sentence2"] = aug.augment(batch["sentence2"], [i + 10_000_000 for i in batch["idx"]], c)
                for k in cols:
                    cols[k].extend(batch[k])
                bar.update(len(batch["idx"]))
                done += len(batch["idx"])
            parts.append(type(src).from_dict(cols, features=src.features))
        bar.close()
    out = concatenate_datasets(parts)
    rate = done / max(1e-9, time.time() - t0)
    print(f"[augment] {a.method}: {done} augmented sentences at {rate:.1f} sentences/s; {len(out)} rows in all")
    with atomic_dir(paths.augmented) as tmp:
        out.save_to_disk(str(tmp / "train"))
        write_json_atomic(tmp / "stats.json", {"method": a.method, "original": len(train), "augmented": done,
                                               "rows": len(out), "sentences_per_s": round(rate, 1)})


if __name__ == "__main__":
    cli(main)
