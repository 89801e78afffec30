"""What a task is, whoever's data it comes from: its kind, its label names in id order, its metrics.

A GLUE preset (`base.task: sst2` ... with no `data.train`) and the user's own table (`data` section) both end up as a
`Task`; every step predicts, scores and names labels through it, so nothing downstream knows where rows came from.
prepare writes it to `outputs/data/task.json`, so the label order every model is trained with is on record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from kdistill.errors import KdistillError

Kind = Literal["single_label", "multi_label", "regression"]
KINDS = ("single_label", "multi_label", "regression")

# every metric each kind reports; the primary one (base/data metric) is chosen among them
KIND_METRICS = {
    "single_label": ("accuracy", "macro_f1", "f1", "matthews_corr"),
    "multi_label": ("micro_f1", "macro_f1", "subset_accuracy"),
    "regression": ("pearson", "spearman"),
}
DEFAULT_METRIC = {"single_label": "accuracy", "multi_label": "micro_f1", "regression": "pearson"}


@dataclass(frozen=True)
class Task:
    name: str
    kind: Kind
    labels: tuple[str, ...] | None  # label names in id order; None for regression
    metric: str  # primary: retention and checkpoint choice
    pair: bool  # rows have a second text (sentence2)
    reported: tuple[str, ...]  # the metrics computed for every model

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def is_multi_label(self) -> bool:
        return self.kind == "multi_label"

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    def model_config(self) -> dict:
        """Keyword arguments for `AutoModelForSequenceClassification.from_pretrained` / a config: the label names
        (so every saved model and registered student names its outputs) and the problem type (its loss)."""
        kw = {"num_labels": self.num_labels, "problem_type": {"single_label": "single_label_classification",
                                                              "multi_label": "multi_label_classification",
                                                              "regression": "regression"}[self.kind]}
        if self.labels is not None:
            kw["id2label"] = dict(enumerate(self.labels))
            kw["label2id"] = {n: i for i, n in enumerate(self.labels)}
        return kw

    def predictions(self, logits: torch.Tensor) -> np.ndarray:
        """Class ids (single label), 0/1 per label (multi-label: sigmoid > 0.5) or scores (regression)."""
        logits = torch.as_tensor(logits).float()
        if self.is_regression:
            return logits.view(-1).numpy()
        if self.is_multi_label:
            return (logits > 0).int().numpy()
        return logits.argmax(-1).numpy()

    def metrics(self, predictions, gold) -> dict[str, float]:
        p, g = np.asarray(predictions), np.asarray(gold)
        if self.is_regression:
            p, g = p.astype(float).ravel(), g.astype(float).ravel()
            if np.std(p) == 0 or np.std(g) == 0:
                return {"pearson": 0.0, "spearman": 0.0}
            return {"pearson": float(stats.pearsonr(p, g)[0]), "spearman": float(stats.spearmanr(p, g)[0])}
        if self.is_multi_label:
            p, g = p.astype(int), np.rint(g).astype(int)
            return {"micro_f1": float(f1_score(g, p, average="micro", zero_division=0)),
                    "macro_f1": float(f1_score(g, p, average="macro", zero_division=0)),
                    "subset_accuracy": float(accuracy_score(g, p))}
        p, g = p.astype(int), g.astype(int)
        out = {}
        for name in self.reported:
            if name == "accuracy":
                out[name] = float(accuracy_score(g, p))
            elif name == "macro_f1":
                out[name] = float(f1_score(g, p, average="macro", labels=range(self.num_labels), zero_division=0))
            elif name == "f1":  # binary F1 of label id 1 (MRPC's official metric)
                out[name] = float(f1_score(g, p, pos_label=1, zero_division=0))
            elif name == "matthews_corr":
                out[name] = float(matthews_corrcoef(g, p)) if len(set(g) | set(p)) > 1 else 0.0
        return out

    def score_logits(self, logits, gold) -> dict[str, float]:
        return self.metrics(self.predictions(logits), gold)

    def chance(self, gold) -> float:
        """What the primary metric gives for a model that knows nothing: always the most frequent class (single
        label), all-zeros (multi-label), or no correlation (regression)."""
        g = np.asarray(gold)
        if self.is_regression:
            return 0.0
        if self.is_multi_label:
            return self.metrics(np.zeros_like(np.rint(g).astype(int)), g)[self.metric]
        majority = np.bincount(g.astype(int), minlength=self.num_labels).argmax()
        return self.metrics(np.full(len(g), majority), g)[self.metric]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Task":
        labels = None if d["labels"] is None else tuple(d["labels"])
        return cls(d["name"], d["kind"], labels, d["metric"], bool(d["pair"]), tuple(d["reported"]))


TASK_FILE = "task.json"


def save_task(task: Task, data_dir: str | Path) -> None:
    (Path(data_dir) / TASK_FILE).write_text(json.dumps(task.to_json(), indent=2) + "\n")


def load_task(data_dir: str | Path) -> Task:
    """The task prepare recorded beside the data it wrote."""
    path = Path(data_dir) / TASK_FILE
    if not path.is_file():
        raise KdistillError(f"{path}: no task record; run the prepare stage first")
    return Task.from_json(json.loads(path.read_text()))


def label_counts(task: Task, labels) -> dict[str, int] | None:
    """Rows per label name (multi-label: rows carrying each label); None for regression."""
    if task.labels is None:
        return None
    y = np.asarray(labels)
    counts = y.sum(0) if task.is_multi_label else np.bincount(y.astype(int), minlength=task.num_labels)
    return {name: int(c) for name, c in zip(task.labels, counts)}
