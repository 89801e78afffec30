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

Kind = Literal["single_label", "multi_label", "regression", "token_classification", "extractive_qa"]
KINDS = ("single_label", "multi_label", "regression", "token_classification", "extractive_qa")

# every metric each kind reports; the primary one (base/data metric) is chosen among them
KIND_METRICS = {
    "single_label": ("accuracy", "macro_f1", "f1", "matthews_corr"),
    "multi_label": ("micro_f1", "macro_f1", "subset_accuracy"),
    "regression": ("pearson", "spearman"),
    # entity-level (seqeval, conlleval's chunking), micro-averaged; per-type F1 (f1_<type>) is reported beside them
    "token_classification": ("entity_f1", "entity_precision", "entity_recall"),
    # SQuAD's official normalisation, best over each question's gold answers (kdistill/data/answers.py)
    "extractive_qa": ("f1", "exact_match"),
}
DEFAULT_METRIC = {"single_label": "accuracy", "multi_label": "micro_f1", "regression": "pearson",
                  "token_classification": "entity_f1", "extractive_qa": "f1"}


@dataclass(frozen=True)
class Task:
    name: str
    kind: Kind
    labels: tuple[str, ...] | None  # label names in id order; None for regression
    metric: str  # primary: retention and checkpoint choice
    pair: bool  # rows have a second text (sentence2)
    reported: tuple[str, ...]  # the metrics computed for every model
    scheme: str | None = None  # token classification: the tag scheme detected in train (IOB2, IOB1, BIOES)
    doc_stride: int | None = None  # extractive QA: tokens shared by consecutive windows of a long context
    max_answer_len: int | None = None  # extractive QA: the longest span (tokens) a prediction may be

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def is_multi_label(self) -> bool:
        return self.kind == "multi_label"

    @property
    def is_token_level(self) -> bool:
        """One label per word (its first sub-token), not per text."""
        return self.kind == "token_classification"

    @property
    def is_span(self) -> bool:
        """Extractive QA: a start and an end logit per token (stacked as logits[..., 0] and [..., 1])."""
        return self.kind == "extractive_qa"

    @property
    def model_class(self):
        """The transformers Auto class whose head this task trains."""
        from transformers import (
            AutoModelForQuestionAnswering,
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
        )

        if self.is_span:
            return AutoModelForQuestionAnswering
        return AutoModelForTokenClassification if self.is_token_level else AutoModelForSequenceClassification

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    def model_config(self) -> dict:
        """Keyword arguments for `AutoModelForSequenceClassification.from_pretrained` / a config: the label names
        (so every saved model and registered student names its outputs) and the problem type (its loss)."""
        if self.is_span:  # a start and an end logit per token: the QA head's own two outputs
            return {}
        kw = {"num_labels": self.num_labels}
        if not self.is_token_level:  # a token classifier's loss is per token whatever the problem type says
            kw["problem_type"] = {"single_label": "single_label_classification",
                                  "multi_label": "multi_label_classification", "regression": "regression"}[self.kind]
        if self.labels is not None:
            kw["id2label"] = dict(enumerate(self.labels))
            kw["label2id"] = {n: i for i, n in enumerate(self.labels)}
        return kw

    def predictions(self, logits: torch.Tensor, rows=None) -> np.ndarray:
        """Class ids (single label), 0/1 per label (multi-label: sigmoid > 0.5) or scores (regression); token
        classification: per row, a tag id per word read at its first sub-token (`rows`: the tokenised split, for
        its `first` column), O where the word has none."""
        if self.is_token_level:
            return self._word_predictions(logits, rows)
        if self.is_span:
            from kdistill.data.answers import span_predictions

            if rows is None:
                raise ValueError("extractive QA predictions need the tokenised windows (offsets, contexts)")
            return span_predictions(logits, rows, self.max_answer_len)
        logits = torch.as_tensor(logits).float()
        if self.is_regression:
            return logits.view(-1).numpy()
        if self.is_multi_label:
            return (logits > 0).int().numpy()
        return logits.argmax(-1).numpy()

    def _word_predictions(self, logits, rows) -> np.ndarray:
        if rows is None:
            raise ValueError("token classification predictions need the tokenised rows (their `first` column)")
        ids = torch.as_tensor(logits).float().argmax(-1).numpy()
        out = np.empty(len(rows), dtype=object)
        outside = self.labels.index("O") if "O" in self.labels else 0
        for i, first in enumerate(rows["first"]):
            out[i] = [int(ids[i, p]) if p is not None else outside for p in first]
        return out

    def gold(self, rows) -> np.ndarray:
        """What `metrics` compares predictions with: the labels (texts) or each row's word tag ids (tokens)."""
        if self.is_token_level:
            out = np.empty(len(rows), dtype=object)
            out[:] = [list(w) for w in rows["word_labels"]]
            return out
        if self.is_span:  # per question: its gold answer texts
            from kdistill.data.answers import gold_answers

            return gold_answers(rows)
        return np.asarray(rows["labels"])

    def metrics(self, predictions, gold) -> dict[str, float]:
        if self.is_token_level:
            from kdistill.data.entities import entity_metrics

            names = lambda rows: [[self.labels[i] for i in r] for r in rows]  # noqa: E731
            return entity_metrics(names(gold), names(predictions))
        if self.is_span:
            from kdistill.data.answers import squad_metrics

            return squad_metrics(predictions, gold)
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

    def score_rows(self, logits, rows) -> dict[str, float]:
        """Every metric for `logits` over a tokenised split (`rows`, as `kdistill.data.batches` makes it)."""
        return self.metrics(self.predictions(logits, rows), self.gold(rows))

    def chance(self, gold) -> float:
        """What the primary metric gives for a model that knows nothing: always the most frequent class (single
        label), all-zeros (multi-label), or no correlation (regression)."""
        if self.is_token_level or self.is_span:  # predicting O everywhere finds no entity; no span, no answer
            return 0.0
        g = np.asarray(gold)
        if self.is_regression:
            return 0.0
        if self.is_multi_label:
            return self.metrics(np.zeros_like(np.rint(g).astype(int)), g)[self.metric]
        majority = np.bincount(g.astype(int), minlength=self.num_labels).argmax()
        return self.metrics(np.full(len(g), majority), g)[self.metric]

    def to_json(self) -> dict:
        d = asdict(self)
        for key in ("scheme", "doc_stride", "max_answer_len"):
            if d[key] is None:  # only the kinds that have them: task.json as before otherwise
                del d[key]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Task":
        labels = None if d["labels"] is None else tuple(d["labels"])
        return cls(d["name"], d["kind"], labels, d["metric"], bool(d["pair"]), tuple(d["reported"]), d.get("scheme"),
                   d.get("doc_stride"), d.get("max_answer_len"))


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


def split_balance(task: Task, ds) -> dict[str, int] | None:
    """What prepare records of a split: rows per label (label_counts), or for token classification words per tag
    and, under `entities`, entities per type."""
    if task.is_span:
        from kdistill.data.answers import answer_words

        return answer_words(ds)
    if not task.is_token_level:
        return label_counts(task, ds["label"])
    from collections import Counter

    from kdistill.data.entities import entities

    tags = Counter(t for row in ds["tags"] for t in row)
    found = Counter(kind for row in ds["tags"] for kind, _, _ in entities([task.labels[t] for t in row]))
    return {**{name: int(tags[i]) for i, name in enumerate(task.labels)},
            **{f"entities {k}": int(v) for k, v in sorted(found.items())}}
