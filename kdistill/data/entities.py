"""Entities in tag sequences and the entity-level metric, both by seqeval (conlleval's chunking, which reads IOB1,
IOB2 and BIOES alike), so what the reports score and what is served are grouped by the same rules."""

from __future__ import annotations


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity in a tag sequence, by seqeval's (conlleval's) chunking, which
    reads IOB1, IOB2 and BIOES alike."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(t, s, e) for t, s, e in get_entities(list(tags))]


def entity_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision, recall and F1 (seqeval, conlleval's rules), and F1 per entity type."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    out = {"entity_f1": float(f1_score(gold, pred, zero_division=0)),
           "entity_precision": float(precision_score(gold, pred, zero_division=0)),
           "entity_recall": float(recall_score(gold, pred, zero_division=0))}
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    for name, m in sorted(report.items()):
        if not name.endswith(" avg"):
            out[f"f1_{name}"] = float(m["f1-score"])
    return out
