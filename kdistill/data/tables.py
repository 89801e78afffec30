"""The user's labelled text: CSV/TSV, JSON/JSON Lines, Parquet or a `datasets.save_to_disk` directory, read into the
columns every step uses (idx, sentence1[, sentence2], label) with every row checked before anything is written.

Each problem is one line naming the file, the row (1-based, header not counted) and the column, and what would be
right: a missing column, an empty text, a label the stated list lacks or train never has, a multi-label value that is
not a list, a regression target that is not a number.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Sequence, Value

from kdistill.data.glue import DataError
from kdistill.data.task import DEFAULT_METRIC, KIND_METRICS, Task

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "arrow")
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
            ".pq": "parquet"}


@dataclass(frozen=True)
class Columns:
    """Which of the file's columns hold what (params: data.text, data.text_pair, data.label)."""

    text: str
    label: str
    text_pair: str | None = None


def table_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "arrow"
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise DataError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; name the file .csv, .tsv, "
                        f".json, .jsonl or .parquet, or set data.format ({', '.join(FORMATS)})")
    return found


def read_records(path: str | Path, fmt: str = "auto") -> list[dict]:
    """Every row of a table as a dict, in file order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    kind = table_format(path, fmt)
    if kind in ("csv", "tsv"):
        text = path.read_text(encoding="utf-8-sig")
        if not text.strip():
            raise DataError(f"{path}: file is empty (expected a header line and rows)")
        # TSV: a tab always separates columns and quotes are text (GLUE's convention); CSV: RFC 4180 quoting
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if kind == "tsv" else ",",
                                quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL, strict=True)
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: not valid {kind.upper()}: {exc}") from None
        bad = next((i for i, r in enumerate(rows) if None in r or None in r.values()), None)
        if bad is not None:
            raise DataError(f"{path}: row {bad + 1}: {'more' if None in rows[bad] else 'fewer'} fields than the header "
                            f"({len(reader.fieldnames)}: {reader.fieldnames})")
        return rows
    if kind == "jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {i + 1}: not valid JSON ({exc.msg}); one JSON object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {i + 1}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
        return rows
    if kind == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):  # {column: [values]}
            n = {len(v) for v in data.values()}
            if len(n) > 1:
                raise DataError(f"{path}: columns of different lengths {sorted(n)}")
            return [dict(zip(data, vals)) for vals in zip(*data.values())]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON array of objects (one per row) or an object of column lists")
        return data
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if kind == "arrow":
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path), keep_in_memory=True)
        if isinstance(ds, DatasetDict):
            raise DataError(f"{path}: holds several splits ({', '.join(ds)}); name one directory per split "
                            f"(save ds['train'] and ds['validation'] separately) in data.train / data.dev")
        return ds.to_list()
    raise DataError(f"{path}: unknown format {kind!r}; use one of {', '.join(FORMATS)}")


def _text(path, i, row, col, key) -> str:
    value = row.get(col)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{path}: row {i + 1}, column {col!r} ({key}): empty text; every row needs text "
                        "(drop the row or fill it)")
    if not isinstance(value, str):
        raise DataError(f"{path}: row {i + 1}, column {col!r} ({key}): {value!r} is not text")
    return value


def _label_name(value) -> str:
    """A label as the name it is kept under: integer-valued labels (1, 1.0, "1") all become "1"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _label_values(path, i, row, col, kind):
    value = row.get(col)
    where = f"{path}: row {i + 1}, column {col!r} (data.label)"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: no label")
    if kind == "regression":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: {value!r} is not a number (data.kind: regression needs a numeric target)") from None
    if kind == "multi_label":
        if isinstance(value, str):  # CSV/TSV cells hold a JSON list: ["sports", "politics"]
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = None
        if not isinstance(value, (list, tuple)) or hasattr(value, "keys"):
            raise DataError(f"{where}: {row.get(col)!r} is not a list of labels (data.kind: multi_label; in CSV "
                            'write a JSON list such as ["a", "b"], [] for none)')
        return [_label_name(v) for v in value]
    if isinstance(value, (list, dict)):
        raise DataError(f"{where}: {value!r} is a {type(value).__name__}; data.kind: single_label takes one label per "
                        "row (multi_label for lists)")
    return _label_name(value)


def _ordered(names) -> list[str]:
    """Default label order: numeric when every name is an integer (0, 1, 2, 10), else alphabetical."""
    names = sorted(set(names))
    try:
        return sorted(names, key=int)
    except ValueError:
        return names


@dataclass
class Table:
    """A checked split: texts, labels as read (names, lists of names or numbers) and where it came from."""

    path: Path
    texts: list[str]
    pairs: list[str] | None
    labels: list

    def label_names(self) -> list[str]:
        flat = (n for v in self.labels for n in (v if isinstance(v, list) else [v]))
        return list(flat)


def read_table(path: str | Path, columns: Columns, kind: str, fmt: str = "auto") -> Table:
    path = Path(path)
    rows = read_records(path, fmt)
    if not rows:
        raise DataError(f"{path}: no rows")
    have = list(rows[0])
    for col, key in ((columns.text, "data.text"), (columns.label, "data.label"), (columns.text_pair, "data.text_pair")):
        if col is not None and col not in have:
            raise DataError(f"{path}: no column {col!r} ({key}); its columns: {have}")
    texts, pairs, labels = [], [] if columns.text_pair else None, []
    for i, row in enumerate(rows):
        texts.append(_text(path, i, row, columns.text, "data.text"))
        if pairs is not None:
            pairs.append(_text(path, i, row, columns.text_pair, "data.text_pair"))
        labels.append(_label_values(path, i, row, columns.label, kind))
    return Table(path, texts, pairs, labels)


def resolve_labels(train: Table, kind: str, stated: list[str] | None) -> tuple[str, ...] | None:
    """The label names in id order: as stated in data.labels (each must occur in train), or train's own sorted."""
    if kind == "regression":
        return None
    seen = Counter(train.label_names())
    if stated is None:
        if kind == "single_label" and len(seen) < 2:
            raise DataError(f"{train.path}: every row has the label {next(iter(seen))!r}; a classifier needs at least "
                            "two classes")
        return tuple(_ordered(seen))
    stated = [_label_name(n) for n in stated]
    unknown = sorted(set(seen) - set(stated))
    if unknown:
        i = next(i for i, n in enumerate(train.labels) if set(n if isinstance(n, list) else [n]) & set(unknown))
        raise DataError(f"{train.path}: row {i + 1}: label {unknown[0]!r} is not in data.labels {stated}; add it to "
                        "the list (ids follow the list's order)")
    return tuple(stated)


def check_labels(table: Table, labels: tuple[str, ...] | None, train: Path) -> None:
    """A dev or test label that train never has: the model could never predict it."""
    if labels is None:
        return
    known = set(labels)
    for i, v in enumerate(table.labels):
        for n in (v if isinstance(v, list) else [v]):
            if n not in known:
                raise DataError(f"{table.path}: row {i + 1}: label {n!r} never occurs in the train split ({train}); "
                                f"train's labels: {list(labels)}")


def features(kind: str, labels, pair: bool) -> Features:
    f = {"idx": Value("int64"), "sentence1": Value("string")}
    if pair:
        f["sentence2"] = Value("string")
    if kind == "regression":
        f["label"] = Value("float32")
    elif kind == "multi_label":
        f["label"] = Sequence(Value("float32"))  # multi-hot: BCE takes float targets
    else:
        f["label"] = ClassLabel(names=list(labels))
    return Features(f)


def to_dataset(table: Table, kind: str, labels) -> Dataset:
    ids = {n: i for i, n in enumerate(labels or ())}
    if kind == "single_label":
        y = [ids[v] for v in table.labels]
    elif kind == "multi_label":
        y = []
        for v in table.labels:
            hot = [0.0] * len(ids)
            for n in v:
                hot[ids[n]] = 1.0
            y.append(hot)
    else:
        y = table.labels
    cols = {"idx": list(range(len(table.texts))), "sentence1": table.texts}
    if table.pairs is not None:
        cols["sentence2"] = table.pairs
    cols["label"] = y
    return Dataset.from_dict(cols, features=features(kind, labels, table.pairs is not None))


def user_task(name: str, kind: str, labels, metric: str | None, pair: bool, scheme: str | None = None,
              doc_stride: int | None = None, max_answer_len: int | None = None) -> Task:
    reported = KIND_METRICS[kind][:2] if kind == "single_label" else KIND_METRICS[kind]
    metric = metric or DEFAULT_METRIC[kind]
    if metric not in KIND_METRICS[kind]:
        raise DataError(f"data.metric {metric!r} is not a {kind} metric; use one of {list(KIND_METRICS[kind])}")
    if metric not in reported:
        reported = reported + (metric,)
    return Task(name, kind, labels, metric, pair, reported, scheme, doc_stride, max_answer_len)
