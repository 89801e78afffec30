"""Corpus preparation: paragraph-per-line text, blank line between documents -> packed token sequences.

Built for corpora larger than memory: nothing holds the whole corpus, every intermediate is an Arrow file.

Sequences never cross a document boundary (TinyBERT/BERT pre-training layout): each document's paragraphs are
tokenised, concatenated, and cut into chunks of max_seq_len - 2 tokens, each wrapped in [CLS] ... [SEP].
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

from datasets import Dataset, Features, Sequence, Value

from kdistill.data.glue import DataError


def read_documents(path: str | Path) -> Iterator[list[str]]:
    """Yield documents (lists of paragraphs) from a corpus file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found (expected paragraph-per-line text, blank line between documents)")
    doc: list[str] = []
    with open(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(f"{path}:{no}: not valid UTF-8; re-encode the corpus as UTF-8") from None
            if line:
                doc.append(line)
            elif doc:
                yield doc
                doc = []
    if doc:
        yield doc


def count_documents(path: str | Path) -> int:
    return sum(1 for _ in read_documents(path))


def pack_corpus(
    path: str | Path, tokenizer, max_seq_len: int = 128, max_documents: int | None = None, min_tokens: int = 8,
    num_proc: int = 1, work_dir: str | Path | None = None, docs_per_batch: int = 64,
) -> Dataset:
    """Tokenise and pack a corpus into an Arrow dataset of `input_ids` (with [CLS]/[SEP]) and `doc` ids.

    Memory stays bounded whatever the corpus size: documents stream from the file into an Arrow table on disk,
    are packed by `datasets.map` in batches (`num_proc` processes, each writing its own Arrow shard) and the
    result is read memory-mapped. `work_dir` holds those intermediate files (a fresh temporary directory when
    None); the caller saves the result elsewhere before removing it.
    """
    if max_seq_len < 8:
        raise ValueError(f"max_seq_len must be at least 8, got {max_seq_len}")
    body = max_seq_len - 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    n_docs = count_documents(path)
    if n_docs == 0:
        raise DataError(f"{path}: corpus file is empty (no paragraphs)")
    total = min(n_docs, max_documents) if max_documents else n_docs
    work = Path(work_dir or tempfile.mkdtemp(prefix="kdistill-pack-"))
    work.mkdir(parents=True, exist_ok=True)

    def documents():
        for d, doc in enumerate(read_documents(path)):
            if d >= total:
                return
            yield {"paragraphs": doc}

    # a fresh cache directory: from_generator would otherwise reuse a table built from an older file at this path
    docs = Dataset.from_generator(documents, features=Features({"paragraphs": Sequence(Value("string"))}),
                                  cache_dir=str(work / "documents"), keep_in_memory=False,
                                  writer_batch_size=docs_per_batch)

    def pack(batch, indices):
        ids_out, doc_out = [], []
        for d, paragraphs in zip(indices, batch["paragraphs"]):
            tokens = [t for ids in tokenizer(paragraphs, add_special_tokens=False)["input_ids"] for t in ids]
            for s in range(0, len(tokens), body):
                chunk = tokens[s : s + body]
                if len(chunk) < min_tokens:
                    continue  # a document's short tail: too little context to learn from
                ids_out.append([cls, *chunk, sep])
                doc_out.append(d)
        return {"input_ids": ids_out, "doc": doc_out}

    feats = Features({"input_ids": Sequence(Value("int32")), "doc": Value("int32")})
    packed = docs.map(pack, batched=True, batch_size=docs_per_batch, with_indices=True, remove_columns=["paragraphs"],
                    features=feats, num_proc=num_proc if num_proc > 1 else None,
                    cache_file_name=str(work / "packed" / "packed.arrow"), desc="pack corpus")
    if len(packed) == 0:  # every later stage would train on nothing; say why here, not in a stage downstream
        raise DataError(f"{path}: the corpus packs to 0 sequences: none of its first {total} document(s) gives "
                        f"{min_tokens} or more tokens with this tokenizer ({len(tokenizer)} entries in its "
                        "vocabulary); use a corpus of longer documents, or check that the tokenizer turns text into tokens")
    return packed
