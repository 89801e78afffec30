"""GLUE task registry and a strict reader for GLUE tsv directories.

GLUE tsv quirks handled here: MRPC starts with a UTF-8 BOM; CoLA has no header; some RTE/STS-B rows begin with a bare
quote, so quoting is disabled (a tab always separates columns). Every problem is reported with file and line before
anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Value

from kdistill.data.task import Task
from kdistill.errors import DataError  # noqa: F401  (raised here; the data readers import it from here too)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    folder: str  # GLUE directory name
    columns: tuple  # tsv columns for text_a[, text_b] and label: header names, or indices for header-less files
    header: bool
    labels: tuple[str, ...] | None  # label strings in id order; None for regression
    metric: str  # primary metric, used for retention and best-checkpoint selection
    hub: tuple[str, str]  # datasets name and config, for hub loading
    n_columns: int | None = None  # exact column count for header-less files

    @property
    def is_pair(self) -> bool:
        return len(self.columns) == 3

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "SST-2", ("sentence", "label"), True, ("0", "1"), "accuracy", ("glue", "sst2")),
    "cola": TaskSpec("cola", "CoLA", (3, 1), False, ("0", "1"), "matthews_corr", ("glue", "cola"), n_columns=4),
    "mrpc": TaskSpec("mrpc", "MRPC", ("#1 String", "#2 String", "Quality"), True, ("0", "1"), "f1", ("glue", "mrpc")),
    "rte": TaskSpec(
        "rte", "RTE", ("sentence1", "sentence2", "label"), True, ("entailment", "not_entailment"), "accuracy", ("glue", "rte")
    ),
    "stsb": TaskSpec("stsb", "STS-B", ("sentence1", "sentence2", "score"), True, None, "pearson", ("glue", "stsb")),
}

SPLITS = ("train", "dev", "test")
READABLE = {"sst2": ("negative", "positive"), "cola": ("unacceptable", "acceptable"),
            "mrpc": ("not_equivalent", "equivalent"), "rte": ("entailment", "not_entailment")}


def glue_task(name: str) -> Task:
    """A GLUE preset as a Task: its readable label names and its official metrics."""
    spec = get_task(name)
    if spec.is_regression:
        return Task(name, "regression", None, "pearson", True, ("pearson", "spearman"))
    reported = ("accuracy",) + ((spec.metric,) if spec.metric != "accuracy" else ())
    return Task(name, "single_label", READABLE[name], spec.metric, spec.is_pair, reported)


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def task_features(spec: TaskSpec) -> Features:
    feats = {"idx": Value("int64"), "sentence1": Value("string")}
    if spec.is_pair:
        feats["sentence2"] = Value("string")
    feats["label"] = Value("float32") if spec.is_regression else ClassLabel(names=list(spec.labels))
    return Features(feats)


def split_path(data_dir: str | Path, spec: TaskSpec, split: str) -> Path:
    return Path(data_dir) / spec.folder / f"{split}.tsv"


def read_glue_tsv(path: str | Path, spec: TaskSpec) -> dict[str, list]:
    """Parse one GLUE tsv file into columns, refusing any malformed row with its file and line number."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the GLUE {spec.folder} split as a tsv file)")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: file is empty (expected a GLUE {spec.folder} tsv with at least one row)")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()

    def decode(i: int, b: bytes) -> str:
        try:
            return b.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}:{i + 1}: not valid UTF-8 (byte {b[exc.start]:#04x} at column {exc.start + 1}); "
                "re-encode the file as UTF-8"
            ) from None

    start = 0
    if spec.header:
        header = decode(0, lines[0]).split("\t")
        missing = [c for c in spec.columns if c not in header]
        if missing:
            raise DataError(f"{path}:1: header lacks column(s) {missing}; found {header}")
        n_cols = len(header)
        idx = [header.index(c) for c in spec.columns]
        start = 1
    else:
        n_cols = spec.n_columns
        idx = list(spec.columns)

    out: dict[str, list] = {"idx": [], "sentence1": [], "label": []}
    if spec.is_pair:
        out["sentence2"] = []
    label_ids = {s: i for i, s in enumerate(spec.labels)} if spec.labels else None
    for i in range(start, len(lines)):
        fields = decode(i, lines[i]).split("\t")
        if len(fields) != n_cols:
            raise DataError(f"{path}:{i + 1}: expected {n_cols} tab-separated columns, found {len(fields)}")
        *texts, label = (fields[j] for j in idx)
        if label_ids is not None:
            if label.strip() not in label_ids:
                raise DataError(f"{path}:{i + 1}: label {label!r} is not one of {list(spec.labels)}")
            value = label_ids[label.strip()]
        else:
            try:
                value = float(label)
            except ValueError:
                raise DataError(f"{path}:{i + 1}: score {label!r} is not a number") from None
        out["idx"].append(len(out["idx"]))
        out["sentence1"].append(texts[0])
        if spec.is_pair:
            out["sentence2"].append(texts[1])
        out["label"].append(value)
    if not out["idx"]:
        raise DataError(f"{path}: has a header but no data rows")
    return out


def load_split(source: str | Path, task: str, split: str) -> Dataset:
    """One split of a task as a `datasets.Dataset` with columns idx, sentence1[, sentence2], label.

    `source` is a GLUE tsv root directory (holding SST-2/, CoLA/, ...) or a hub name such as "glue/sst2".
    """
    spec = get_task(task)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {SPLITS}")
    src = Path(source)
    if src.is_dir():
        return Dataset.from_dict(read_glue_tsv(split_path(src, spec, split), spec), features=task_features(spec))
    if "/" in str(source) and not src.exists():
        return _load_hub(str(source), spec, split)
    raise DataError(f"{source}: not a GLUE tsv directory (expected {source}/{spec.folder}/{split}.tsv) nor a hub name like 'glue/{task}'")


def check_split_available(source: str | Path, task: str, split: str) -> None:
    """Fail fast (before any training) when a split the params ask for does not exist."""
    spec = get_task(task)
    src = Path(source)
    if src.is_dir() and not split_path(src, spec, split).is_file():
        have = sorted(p.stem for p in (src / spec.folder).glob("*.tsv")) if (src / spec.folder).is_dir() else []
        raise DataError(
            f"task {task!r} has no {split!r} split: {split_path(src, spec, split)} does not exist "
            f"(available splits: {have or 'none'})"
        )


def _load_hub(name: str, spec: TaskSpec, split: str) -> Dataset:  # pragma: no cover - needs network
    import datasets

    path, _, config = name.partition("/")
    hub_split = {"dev": "validation"}.get(split, split)
    ds = datasets.load_dataset(path, config or spec.hub[1], split=hub_split)
    text_cols = [c for c in ("sentence", "sentence1", "question", "question1") if c in ds.column_names][:1]
    text_cols += [c for c in ("sentence2", "question2") if c in ds.column_names][:1]
    ds = ds.rename_column(text_cols[0], "sentence1")
    if len(text_cols) > 1:
        ds = ds.rename_column(text_cols[1], "sentence2")
    keep = ["idx", "sentence1", "label"] + (["sentence2"] if spec.is_pair else [])
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
    return ds.cast(task_features(spec))


def text_pairs(ds: Dataset) -> tuple[list[str], list[str] | None]:
    return ds["sentence1"], (ds["sentence2"] if "sentence2" in ds.column_names else None)
