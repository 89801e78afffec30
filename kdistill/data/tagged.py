"""Token classification data: one row is a list of words and a list of tags of the same length.

Read from the CoNLL column format (one word per line, its tag in a named column, blank lines between sentences,
`-DOCSTART-` lines skipped), JSON Lines / JSON with a words column and a tags column, Parquet, or a saved dataset.
Tags are kept as names (`O`, `B-person`, ...); the scheme (IOB2, IOB1 or BIOES) is detected from the train tags and
stated. Entity spans are read from tags by kdistill.data.entities (seqeval's chunking), which the metric uses too, so
what is served and what is scored agree.

The teacher's tokenizer splits each word into sub-tokens; a word's tag sits on its first sub-token and every other
sub-token (and every special token) carries -100, which the losses and the metric ignore. A word the tokenizer drops
(zero sub-tokens: a control character alone) and a word cut off by `max_len` get no prediction: they count as `O`
when scored, so a gold entity there is a miss, never silently left out.

Every problem is one line naming the file, the sentence's line (CoNLL) or row (tables), and what would be right.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from kdistill.data.entities import entities
from kdistill.errors import DataError

IGNORE = -100  # the label of sub-tokens that are not a word's first (and of special tokens)
PREFIXES = {"B", "I", "E", "S"}
CONLL_SUFFIXES = (".conll", ".conllu", ".bio", ".iob")


@dataclass(frozen=True)
class TaggedRow:
    words: tuple[str, ...]
    tags: tuple[str, ...]
    where: str  # "line 12" (CoNLL: the sentence's first line) or "row 3" (tables), for error messages


def is_conll(path: Path, fmt: str = "auto") -> bool:
    return fmt == "conll" or (fmt == "auto" and Path(path).suffix.lower() in CONLL_SUFFIXES)


def read_conll(path: str | Path, tag_column: int = -1) -> list[TaggedRow]:
    """Sentences of a CoNLL file: whitespace-separated columns, the word first and the tag in `tag_column` (0-based;
    -1: the last). A blank (or whitespace-only) line ends a sentence; `-DOCSTART-` lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows: list[TaggedRow] = []
    words: list[str] = []
    tags: list[str] = []
    start = width = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                rows.append(TaggedRow(tuple(words), tuple(tags), f"line {start}"))
            words, tags, start = [], [], None
            continue
        if len(fields) < 2:
            raise DataError(f"{path}: line {n}: {line.strip()!r} has one column; each line is a word and its tag "
                            "(and any columns between), separated by whitespace, with a blank line between sentences")
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            raise DataError(f"{path}: line {n}: {len(fields)} columns where the lines before have {width}; a word "
                            "holding a space splits its line (replace the space, or use JSON Lines)")
        if not -width <= tag_column < width:
            raise DataError(f"{path}: line {n}: no column {tag_column} (the file has {width}); set data.tag_column")
        start = start or n
        words.append(fields[0])
        tags.append(fields[tag_column])
    if words:
        rows.append(TaggedRow(tuple(words), tuple(tags), f"line {start}"))
    if not rows:
        raise DataError(f"{path}: no sentences (expected one word and its tag per line, blank lines between sentences)")
    return rows


def from_records(path: str | Path, records: list[dict], words_col: str, tags_col: str) -> list[TaggedRow]:
    """Rows of a table whose `words_col` and `tags_col` hold lists of strings."""
    rows = []
    for i, r in enumerate(records):
        where = f"row {i + 1}"
        for col in (words_col, tags_col):
            value = r.get(col)
            if isinstance(value, str) and value.strip().startswith("["):  # a list written as JSON text (CSV)
                try:
                    value = r[col] = json.loads(value)
                except json.JSONDecodeError:
                    pass
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise DataError(f"{path}: {where}, column {col!r}: expected a list of strings, got "
                                f"{type(value).__name__ if value is not None else 'nothing'} (columns: "
                                f"{', '.join(r)}); set data.text / data.label to the words and tags columns")
        rows.append(TaggedRow(tuple(r[words_col]), tuple(r[tags_col]), where))
    return rows


def read_tagged(path: str | Path, fmt: str = "auto", words_col: str = "tokens", tags_col: str = "tags",
                tag_column: int = -1) -> list[TaggedRow]:
    """Every sentence of a token-classification file, checked (check_rows)."""
    path = Path(path)
    if is_conll(path, fmt):
        rows = read_conll(path, tag_column)
    else:
        from kdistill.data.tables import read_records

        rows = from_records(path, read_records(path, fmt), words_col, tags_col)
    check_rows(path, rows)
    return rows


def check_rows(path, rows: list[TaggedRow]) -> None:
    """Words and tags line up, no word is empty, and every tag is O or <prefix>-<type>."""
    for r in rows:
        if len(r.words) != len(r.tags):
            raise DataError(f"{path}: {r.where}: {len(r.words)} words and {len(r.tags)} tags; each word needs one tag")
        if not r.words:
            raise DataError(f"{path}: {r.where}: no words; drop the row")
        for j, (w, t) in enumerate(zip(r.words, r.tags)):
            if not w.strip():
                raise DataError(f"{path}: {r.where}: word {j + 1} is empty; every word needs text")
            if t != "O" and (len(t) < 3 or t[1] not in "-_" or t[0] not in PREFIXES):
                raise DataError(f"{path}: {r.where}: word {j + 1} ({w!r}) has tag {t!r}; a tag is O or "
                                "B-/I-/E-/S- followed by the entity type (e.g. B-person)")


def check_known_tags(path, rows: list[TaggedRow], known: set[str], train_path) -> None:
    """Every tag of `rows` (a dev or test split) is one train has: a model cannot predict a tag it never saw."""
    for r in rows:
        for j, t in enumerate(r.tags):
            if t not in known:
                raise DataError(f"{path}: {r.where}: word {j + 1} ({r.words[j]!r}) has tag {t!r}, which the train "
                                f"split {train_path} never has ({len(known)} tags: {', '.join(sorted(known))}); fix "
                                "the tag or add examples of it to train")


def tag_names(rows: list[TaggedRow]) -> tuple[str, ...]:
    """The tags in a stable order: O first, then by entity type and prefix (B, I, E, S)."""
    seen = {t for r in rows for t in r.tags}
    order = {"B": 0, "I": 1, "E": 2, "S": 3}
    return tuple(sorted(seen, key=lambda t: (t != "O", t[2:], order.get(t[0], 9))))


def detect_scheme(rows: list[TaggedRow]) -> str:
    """BIOES when any tag is E- or S-; IOB2 when every entity opens with B- (no I-X after O or another type);
    else IOB1 (I- opens entities, B- only splits two adjacent entities of one type)."""
    prefixes = {t[0] for r in rows for t in r.tags if t != "O"}
    if prefixes & {"E", "S"}:
        return "BIOES"
    for r in rows:
        prev = "O"
        for t in r.tags:
            if t[0] == "I" and (prev == "O" or prev[2:] != t[2:]):
                return "IOB1"
            prev = t
    return "IOB2"


def entity_counts(rows: list[TaggedRow]) -> dict[str, int]:
    return dict(sorted(Counter(t for r in rows for t, _, _ in entities(list(r.tags))).items()))


# --- sub-tokens ------------------------------------------------------------------------------------------------------

def align(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """One label per sub-token: the word's label on its first sub-token, IGNORE on the rest and on special tokens."""
    out, prev = [], None
    for w in word_ids:
        out.append(IGNORE if w is None or w == prev else word_labels[w])
        prev = w
    return out


def first_subtokens(word_ids: list[int | None], n_words: int) -> list[int | None]:
    """For each word, the position of its first sub-token, or None when the tokenizer dropped it or `max_len` cut
    it off."""
    first: list[int | None] = [None] * n_words
    for pos, w in enumerate(word_ids):
        if w is not None and first[w] is None:
            first[w] = pos
    return first
