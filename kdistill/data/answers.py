"""Extractive question answering: SQuAD files read and checked, contexts cut into windows, spans chosen, scored.

Rows: a question, its context, and the answers (texts and character starts; SQuAD v1.1's dev has up to five per
question, all gold). A file is SQuAD's nested JSON (`data[].paragraphs[].qas[]`) or a table (JSON Lines, JSON list,
Parquet) with `context`, `question` and `answers` (`{"text": [...], "answer_start": [...]}`, as Hugging Face's
squad dataset has it, or a list of `{"text", "answer_start"}`).

Windows: a context longer than `base.max_seq_len` (with the question) is cut into windows that overlap by
`data.doc_stride` tokens, as Hugging Face's run_qa does. A training window's target is the token span of the first
answer, or the first token ([CLS]) when the answer is not wholly inside it. At prediction, every window proposes its
best span (end >= start, at most `data.max_answer_len` tokens, inside the context) by start + end logit, and the
best over a question's windows wins.

Metrics: exact match and F1 with the official SQuAD v1.1 normalisation (lower case, no punctuation, no articles,
single spaces), computed by torchmetrics' implementation of the official script, the maximum over the gold answers.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdistill.errors import DataError


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    texts: tuple[str, ...]
    starts: tuple[int, ...]


def _answers(raw, where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if isinstance(raw, dict) and "text" in raw and "answer_start" in raw:
        texts, starts = raw["text"], raw["answer_start"]
    elif isinstance(raw, list) and all(isinstance(a, dict) and {"text", "answer_start"} <= set(a) for a in raw):
        texts, starts = [a["text"] for a in raw], [a["answer_start"] for a in raw]
    else:
        raise DataError(f"{where}: answers must be {{\"text\": [...], \"answer_start\": [...]}} or a list of "
                        f"{{\"text\", \"answer_start\"}}; got {str(raw)[:60]}")
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise DataError(f"{where}: answers has {len(texts) if isinstance(texts, list) else '?'} texts but "
                        f"{len(starts) if isinstance(starts, list) else '?'} starts; give one answer_start per text")
    return tuple(str(t) for t in texts), tuple(starts)


def _unanswerable(where: str):
    raise DataError(f"{where}: no answer (an unanswerable SQuAD 2.0 question); extractive_qa reads answerable "
                    "questions only: leave unanswerable ones out of the file")


def _check(q: Question, where: str) -> Question:
    if not isinstance(q.question, str) or not q.question.strip():
        raise DataError(f"{where}: the question is empty; every row needs a question")
    if not isinstance(q.context, str) or not q.context.strip():
        raise DataError(f"{where}: the context is empty; every row needs the text that holds its answer")
    if not q.texts:
        _unanswerable(where)
    for text, start in zip(q.texts, q.starts):
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise DataError(f"{where}: answer_start {start!r} is not a character position (an integer >= 0)")
        if not text.strip():
            raise DataError(f"{where}: an answer text is empty")
        found = q.context[start: start + len(text)]
        if found != text:
            raise DataError(f"{where}: answer_start {start} does not point at the answer {text[:40]!r} in the "
                            f"context (there it reads {found[:40]!r}); answer_start is the answer's first character's "
                            "0-based offset in the context")
    return q


def read_answers(path: str | Path, fmt: str = "auto") -> list[Question]:
    """Every question of a SQuAD JSON file or a table, each checked; refusals name the file and the row."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; data.train/dev/test name SQuAD JSON or a JSON Lines/Parquet table")
    fmt = fmt if fmt != "auto" else {".jsonl": "jsonl", ".parquet": "parquet"}.get(path.suffix.lower(), "json")
    if fmt == "json":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); give SQuAD's JSON or JSON Lines "
                            "with data.format: jsonl") from None
        if isinstance(raw, dict) and "data" in raw:
            return _nested(path, raw["data"])
        if not isinstance(raw, list):
            raise DataError(f"{path}: expected SQuAD's {{\"data\": [...]}} or a list of rows; got a {type(raw).__name__}")
        rows = raw
    elif fmt == "jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {n}: not valid JSON ({exc.msg})") from None
    elif fmt == "parquet":
        import pandas as pd

        rows = pd.read_parquet(path).to_dict("records")
        for r in rows:  # numpy arrays inside a Parquet struct: plain lists
            a = r.get("answers")
            if isinstance(a, dict):
                r["answers"] = {k: [x.item() if hasattr(x, "item") else x for x in v] for k, v in a.items()}
    else:
        raise DataError(f"{path}: data.format {fmt} cannot hold questions; use json (SQuAD), jsonl or parquet")
    out = []
    for n, r in enumerate(rows, 1):
        where = f"{path}, {'line' if fmt == 'jsonl' else 'row'} {n}"
        missing = [k for k in ("context", "question", "answers") if not isinstance(r, dict) or k not in r]
        if missing:
            raise DataError(f"{where}: no {missing[0]!r}; each row needs context, question and answers")
        texts, starts = _answers(r["answers"], where)
        out.append(_check(Question(str(r.get("id", n)), r["question"], r["context"], texts, starts), where))
    if not out:
        raise DataError(f"{path}: no questions")
    return out


def _nested(path: Path, articles) -> list[Question]:
    out = []
    for a, article in enumerate(articles):
        for g, para in enumerate(article.get("paragraphs", [])):
            for k, qa in enumerate(para.get("qas", [])):
                where = f"{path}, data[{a}].paragraphs[{g}].qas[{k}] (id {qa.get('id', '?')})"
                if qa.get("is_impossible"):  # SQuAD 2.0 keeps plausible answers beside the flag
                    _unanswerable(where)
                texts, starts = _answers(qa.get("answers"), where)
                out.append(_check(Question(str(qa.get("id", f"{a}.{g}.{k}")), qa.get("question"), para.get("context"),
                                           texts, starts), where))
    if not out:
        raise DataError(f"{path}: no questions under data[].paragraphs[].qas[]")
    return out


def answer_words(ds) -> dict[str, int]:
    """What prepare records of a QA split: questions, distinct contexts, first-answer length in words."""
    n = np.array([len(t[0].split()) for t in ds["answer_texts"]]) if len(ds) else np.zeros(1)
    return {"questions": len(ds), "contexts": len(set(ds["context"])), "answer words median": int(np.median(n)),
            "answer words p95": int(np.percentile(n, 95)), "answer words max": int(n.max())}


def check_room(questions, ids, tokenizer, max_len: int, stride: int, where: str = "") -> None:
    """Refuse a tokenizer without character offsets, or a question so long that its windows would hold no more
    context than the stride they share (the window could not advance)."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"extractive_qa needs a fast tokenizer (character offsets); {type(tokenizer).__name__} is not one")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(x) for x in tokenizer(list(questions), add_special_tokens=False)["input_ids"]]
    for i, n in enumerate(lengths):
        if max_len - specials - n <= stride:
            raise DataError(f"{where}question {ids[i]!r} ({questions[i][:40]!r}): its {n} tokens leave "
                            f"{max_len - specials - n} of base.max_seq_len {max_len} for the context, not more than "
                            f"data.doc_stride {stride}; raise base.max_seq_len or lower data.doc_stride")


def windows(batch: dict, tokenizer, max_len: int, stride: int) -> dict:
    """Tokenised windows of a batch of questions (columns question, context, answer_texts, answer_starts): model
    inputs, `labels` [start, end] of the first answer (0, 0 when the window does not hold it), and what scoring
    reads: `example` (the question's row), `offsets` (each context token's character span; [-1, -1] elsewhere),
    `context` and `answers`."""
    check_room(batch["question"], batch["id"], tokenizer, max_len, stride)
    enc = tokenizer(batch["question"], batch["context"], truncation="only_second", max_length=max_len, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    sample = enc.pop("overflow_to_sample_mapping")
    offsets, labels = [], []
    for w, ex in enumerate(sample):
        seq = enc.sequence_ids(w)
        offs = [[int(a), int(b)] if s == 1 else [-1, -1] for (a, b), s in zip(enc["offset_mapping"][w], seq)]
        offsets.append(offs)
        a = batch["answer_starts"][ex][0]
        b = a + len(batch["answer_texts"][ex][0])
        ctx = [k for k, s in enumerate(seq) if s == 1]
        if not ctx or offs[ctx[0]][0] > a or offs[ctx[-1]][1] < b:
            labels.append([0, 0])  # the answer is not wholly in this window: the model learns to point at [CLS]
            continue
        start = next(k for k in ctx if offs[k][1] > a)
        end = next(k for k in reversed(ctx) if offs[k][0] < b)
        labels.append([start, end])
    enc.pop("offset_mapping")
    return {**enc, "labels": labels, "example": [batch["idx"][e] for e in sample], "offsets": offsets,
            "context": [batch["context"][e] for e in sample], "answers": [list(batch["answer_texts"][e]) for e in sample]}


def best_span(start: np.ndarray, end: np.ndarray, offsets, max_answer_len: int) -> tuple[float, int, int] | None:
    """(start + end logit, first character, end character) of a window's best span inside the context, at most
    `max_answer_len` tokens long; None when the window holds no context."""
    ctx = np.array([o[0] >= 0 for o in offsets])
    if not ctx.any():
        return None
    s = np.where(ctx, start[: len(ctx)], -np.inf)
    e = np.where(ctx, end[: len(ctx)], -np.inf)
    scores = s[:, None] + e[None, :]
    i, j = np.indices(scores.shape)
    scores[(j < i) | (j - i >= max_answer_len)] = -np.inf
    k = int(np.argmax(scores))
    a, b = divmod(k, scores.shape[1])
    if not np.isfinite(scores[a, b]):
        return None
    return float(scores[a, b]), int(offsets[a][0]), int(offsets[b][1])


def span_predictions(logits, rows, max_answer_len: int) -> np.ndarray:
    """Per question (in the order of `example`), the answer text the best window's best span gives ('' if none).
    `logits`: [windows, tokens, 2] (start, end), padded beyond each window."""
    logits = np.asarray(logits, dtype=np.float32)
    best: dict[int, tuple[float, str]] = {}
    for w, (ex, offs, ctx) in enumerate(zip(rows["example"], rows["offsets"], rows["context"])):
        span = best_span(logits[w, :, 0], logits[w, :, 1], offs, max_answer_len)
        if span is not None and (ex not in best or span[0] > best[ex][0]):
            best[ex] = (span[0], ctx[span[1]: span[2]])
    order = list(dict.fromkeys(rows["example"]))
    out = np.empty(len(order), dtype=object)
    out[:] = [best[e][1] if e in best else "" for e in order]
    return out


def gold_answers(rows) -> np.ndarray:
    """Per question (in the order of `example`), its gold answer texts."""
    seen: dict[int, list[str]] = {}
    for ex, answers in zip(rows["example"], rows["answers"]):
        seen.setdefault(ex, list(answers))
    out = np.empty(len(seen), dtype=object)
    out[:] = list(seen.values())
    return out


@functools.lru_cache(maxsize=200_000)
def question_score(prediction: str, gold: tuple[str, ...], metric: str) -> float:
    """One question's F1 or exact match (the best over its gold answers), by the same torchmetrics code as
    squad_metrics (whose value is their mean): a bootstrap over questions resamples these."""
    import importlib

    # the module, not the package's `squad` function of the same name that shadows it as an attribute
    sq = importlib.import_module("torchmetrics.functional.text.squad")
    fn = sq._compute_f1_score if metric == "f1" else sq._compute_exact_match_score
    return float(sq._metric_max_over_ground_truths(fn, prediction, list(gold)))


def squad_metrics(predictions, gold) -> dict[str, float]:
    """Exact match and F1 (0..1) with SQuAD's official normalisation, best over each question's gold answers."""
    from torchmetrics.functional.text import squad

    if len(gold) == 0:
        return {"f1": 0.0, "exact_match": 0.0}
    preds = [{"prediction_text": str(p), "id": str(i)} for i, p in enumerate(predictions)]
    target = [{"answers": {"text": list(g), "answer_start": [0] * len(g)}, "id": str(i)} for i, g in enumerate(gold)]
    out = squad(preds, target)
    return {"f1": float(out["f1"]) / 100, "exact_match": float(out["exact_match"]) / 100}
