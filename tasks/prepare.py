"""Step 1, corpus prep: task splits and the packed pre-training corpus as Arrow datasets."""

import shutil

import pyarrow.compute as pc

from kdistill.data.corpus import pack_corpus
from kdistill.data.splits import load_task_splits, shared_rows
from kdistill.data.store import save_dataset
from kdistill.data.task import save_task, split_balance
from kdistill.io import atomic_dir, write_json_atomic
from kdistill.models import load_tokenizer
from kdistill.train.precision import resolve_threads

from .common import ROOT, cli, setup


def main() -> None:
    p, paths = setup("prepare")
    task, train, dev = load_task_splits(p)  # reads and validates every row before anything is written
    balance = {"train": split_balance(task, train), p.base.eval_split: split_balance(task, dev)}
    overlap = shared_rows(train, dev)
    tok = load_tokenizer(p.base.teacher)
    num_proc = resolve_threads(p.prepare.num_proc)
    with atomic_dir(paths.data) as tmp:
        # the packing's intermediate Arrow files live inside the temporary output: a full disk or a kill leaves
        # nothing behind, and they are removed before the output is renamed into place
        scratch = tmp / ".packing"
        corpus = pack_corpus(ROOT / p.prepare.corpus, tok, p.prepare.corpus_seq_len, p.prepare.max_documents,
                             num_proc=num_proc, work_dir=scratch)
        save_dataset(train, tmp / "train")
        save_dataset(dev, tmp / "dev")
        save_dataset(corpus, tmp / "corpus")
        docs = pc.count_distinct(corpus.data.column("doc")).as_py()
        save_task(task, tmp)
        write_json_atomic(tmp / "stats.json", {"task": p.base.task, "kind": task.kind, "train": len(train),
                                               "dev": len(dev), "labels": task.labels, "label_counts": balance,
                                               **({"scheme": task.scheme} if task.scheme else {}),
                                               "train_dev_overlap": overlap, "corpus_sequences": len(corpus),
                                               "corpus_documents": docs})
        sequences = len(corpus)
        del corpus  # its memory map points into the scratch directory
        shutil.rmtree(scratch)
    print(f"[prepare] train {len(train)}, {p.base.eval_split} {len(dev)}, corpus {sequences} sequences "
          f"from {docs} documents ({num_proc} processes)")
    if task.scheme:
        print(f"[prepare] tags: {task.scheme} scheme (detected in train), {len(task.labels)} tags")
    if task.is_span:
        for split, stats in balance.items():
            print(f"[prepare] {split}: " + ", ".join(f"{n} {c}" for n, c in stats.items()))
    if task.labels is not None:
        for split, counts in balance.items():
            shares = {n: c for n, c in counts.items() if not n.startswith("entities ")}  # tokens: words per tag
            total = sum(shares.values()) or 1
            print(f"[prepare] {split} labels: " + ", ".join(f"{n} {c} ({c / total:.1%})" for n, c in shares.items()))
            if len(shares) < len(counts):
                print(f"[prepare] {split} " + ", ".join(f"{n} {c}" for n, c in counts.items() if n not in shares))
    if overlap:
        print(f"[prepare] warning: {overlap} {p.base.eval_split} rows also occur in train (same text): their score "
              "measures memory, not skill")


if __name__ == "__main__":
    cli(main)
