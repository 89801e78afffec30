"""Step 1, corpus prep: task splits and the packed pre-training corpus as Arrow datasets."""

from kdistill.corpus import pack_corpus
from kdistill.io import atomic_dir, write_json_atomic
from kdistill.models import load_tokenizer

from .common import ROOT, cli, load_task_splits, setup


def main() -> None:
    p, paths = setup("prepare")
    train, dev = load_task_splits(p)  # reads and validates every row before anything is written
    tok = load_tokenizer(p.base.teacher)
    corpus = pack_corpus(ROOT / p.prepare.corpus, tok, p.prepare.corpus_seq_len, p.prepare.max_documents)
    with atomic_dir(paths.data) as tmp:
        train.save_to_disk(str(tmp / "train"))
        dev.save_to_disk(str(tmp / "dev"))
        corpus.save_to_disk(str(tmp / "corpus"))
        write_json_atomic(tmp / "stats.json", {"task": p.base.task, "train": len(train), "dev": len(dev),
                                               "corpus_sequences": len(corpus), "corpus_documents": len(set(corpus["doc"]))})
    print(f"[prepare] train {len(train)}, {p.base.eval_split} {len(dev)}, corpus {len(corpus)} sequences")


if __name__ == "__main__":
    cli(main)
