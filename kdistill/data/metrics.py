"""GLUE metrics: accuracy, Matthews correlation, F1, Pearson and Spearman."""

from __future__ import annotations

import numpy as np
from scipy import stats

from kdistill.data.glue import get_task


def accuracy(pred, gold) -> float:
    return float((np.asarray(pred) == np.asarray(gold)).mean())


def matthews_corr(pred, gold) -> float:
    p, g = np.asarray(pred).astype(bool), np.asarray(gold).astype(bool)
    tp, tn = float((p & g).sum()), float((~p & ~g).sum())
    fp, fn = float((p & ~g).sum()), float((~p & g).sum())
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if den == 0 else float((tp * tn - fp * fn) / den)


def f1(pred, gold) -> float:
    p, g = np.asarray(pred).astype(bool), np.asarray(gold).astype(bool)
    tp = float((p & g).sum())
    den = float(p.sum() + g.sum())
    return 0.0 if den == 0 else 2 * tp / den


def task_metrics(task: str, predictions, labels) -> dict[str, float]:
    """All GLUE metrics of a task; predictions are class ids (classification) or scores (regression)."""
    spec = get_task(task)
    if spec.is_regression:
        p, g = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
        if np.std(p) == 0 or np.std(g) == 0:
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": float(stats.pearsonr(p, g)[0]), "spearman": float(stats.spearmanr(p, g)[0])}
    out = {"accuracy": accuracy(predictions, labels)}
    if task == "cola":
        out["matthews_corr"] = matthews_corr(predictions, labels)
    if task == "mrpc":
        out["f1"] = f1(predictions, labels)
    return out


def primary_metric(task: str) -> str:
    return get_task(task).metric
