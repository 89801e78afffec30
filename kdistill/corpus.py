"""Corpus preparation: paragraph-per-line text, blank line between documents -> packed token sequences.

Sequences never cross a document boundary (TinyBERT/BERT pre-training layout): each document's paragraphs are
tokenised, concatenated, and cut into chunks of max_seq_len - 2 tokens, each wrapped in [CLS] ... [SEP].
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from datasets import Dataset, Features, Sequence, Value
from tqdm.auto import tqdm

from .glue import DataError


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
    path: str | Path, tokenizer, max_seq_len: int = 128, max_documents: int | None = None, min_tokens: int = 8
) -> Dataset:
    """Tokenise and pack a corpus into an Arrow dataset of `input_ids` (with [CLS]/[SEP]) and `doc` ids."""
    if max_seq_len < 8:
        raise ValueError(f"max_seq_len must be at least 8, got {max_seq_len}")
    body = max_seq_len - 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    n_docs = count_documents(path)
    if n_docs == 0:
        raise DataError(f"{path}: corpus file is empty (no paragraphs)")
    total = min(n_docs, max_documents) if max_documents else n_docs
    ids_out: list[list[int]] = []
    doc_out: list[int] = []
    for d, doc in enumerate(tqdm(read_documents(path), total=total, desc="pack corpus", unit="doc")):
        if max_documents and d >= max_documents:
            break
        tokens = [t for ids in tokenizer(doc, add_special_tokens=False)["input_ids"] for t in ids]
        for s in range(0, len(tokens), body):
            chunk = tokens[s : s + body]
            if len(chunk) < min_tokens:
                continue  # a document's short tail: too little context to learn from
            ids_out.append([cls, *chunk, sep])
            doc_out.append(d)
    feats = Features({"input_ids": Sequence(Value("int32")), "doc": Value("int32")})
    return Dataset.from_dict({"input_ids": ids_out, "doc": doc_out}, features=feats)
