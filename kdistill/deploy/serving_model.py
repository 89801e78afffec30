"""The registered student as an MLflow pyfunc: raw text in, labels out, computed by ONNX Runtime.

Logged as an MLflow "model from code": this file travels inside the registered model, so it imports nothing from
kdistill. Artifacts: `onnx` (the variant chosen at registration: fp32 or int8), `tokenizer` (a Hugging Face
tokenizer directory). model_config: task kind, max_seq_len, threads, the variant's name.

Input: one string, a list of strings, or a DataFrame with a `text` column (and `text_pair` for pair tasks; a DataFrame
of one column is read as the texts whatever its name). Anything else (null, a number, a list inside a row, a mapping
without the text column) is refused with an MlflowException naming what came and what is expected, so `make serve`
answers HTTP 400 with a short JSON error. MLflow's server attaches a traceback, with the installation's paths, to any
other exception a model raises: none leaves predict. An error inside the model itself is logged here with its
traceback and answered with one line.
Output: a DataFrame with, per kind, `label` (the task's label name) and `probability` (single-label), `labels` (the
names whose sigmoid passes 0.5) and `probabilities` (one per name; multi-label), `score` (regression), or `entities`
(token classification: each {text, label, start, end, score}, with character offsets into the text).

Extractive QA: input `{"question": ..., "context": ...}` (strings, or lists of the same length), a list of such
mappings, or a DataFrame with `question` and `context` columns; output `answer`, `start`, `end` (character offsets
into the context) and `score` (the span's start probability times its end probability, softmaxes over the context
tokens of its window). A long context is read in windows `doc_stride` tokens apart, as in training and in the
reports, and the best span (end >= start, at most `max_answer_len` tokens) over all windows wins.
Each window (and each NER text) is one call to ONNX Runtime, unpadded, as the export stage scored it: an int8
variant's dynamic quantization ranges depend on everything in a call.

Token classification: the text is split into words (runs of letters and digits, and each other non-space character
alone, as CoNLL-style data is tokenised), each word's tag is read at its first sub-token, and the tags are grouped into
entities by seqeval's chunking, the same rules the entity F1 of the reports uses; an entity's score is the mean of
its words' tag probabilities.
"""

from __future__ import annotations

import logging
import re

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE


EXPECTED = '{"inputs": ["a good movie", "a dull plot"]} or {"inputs": "a good movie"}'
EXPECTED_QA = '{"inputs": {"question": "Who wrote it?", "context": "It was written by Ann."}}'
WORD = re.compile(r"\w+|[^\w\s]")  # token classification: the words a text is split into
_log = logging.getLogger("kdistill.serving")


def _refuse(message: str):
    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _shown(v) -> str:
    """A received value for an error message: its type and a short repr (a request may be megabytes)."""
    text = repr(v.tolist() if isinstance(v, np.ndarray) else v)
    return f"{type(v).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _text_list(values, column: str) -> list[str]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, np.str_):
            v = str(v)
        if not isinstance(v, str):
            _refuse(f"input row {i}, {column}: {_shown(v)} is not text; send one string per row, e.g. {EXPECTED}")
        out.append(v)
    return out


class OnnxTextClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        cfg = context.model_config or {}
        self.max_len = int(cfg.get("max_seq_len", 128))
        # models registered before `kind` existed carry `regression` only
        self.kind = cfg.get("kind") or ("regression" if cfg.get("regression") else "single_label")
        self.labels = list(cfg.get("labels") or [])
        self.batch_size = int(cfg.get("batch_size", 64))
        self.doc_stride = int(cfg.get("doc_stride") or 64)
        self.max_answer_len = int(cfg.get("max_answer_len") or 30)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(cfg.get("threads", 1))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # residual + LayerNorm unfused: ORT's CPU SkipLayerNormalization kernel is several times slower than the pair
        self.session = ort.InferenceSession(context.artifacts["onnx"], so, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=["SkipLayerNormFusion"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["tokenizer"])

    def _texts(self, model_input):
        if isinstance(model_input, pd.DataFrame):
            if "text" not in model_input.columns:
                if model_input.shape[1] != 1:
                    _refuse(f"expected a `text` column (and `text_pair` for pair tasks); got the columns "
                            f"{[str(c) for c in model_input.columns][:10]}; send e.g. {EXPECTED}")
                return _text_list(model_input.iloc[:, 0].tolist(), "text"), None
            pair = _text_list(model_input["text_pair"].tolist(), "text_pair") if "text_pair" in model_input.columns else None
            return _text_list(model_input["text"].tolist(), "text"), pair
        if isinstance(model_input, (str, np.str_)):
            return [str(model_input)], None
        if isinstance(model_input, np.ndarray) and model_input.ndim == 0:  # what MLflow makes of {"inputs": "text"}
            return _text_list([model_input.item()], "text"), None
        if isinstance(model_input, np.ndarray) and model_input.ndim > 1:
            _refuse(f"expected one text per row; got an array of shape {list(model_input.shape)} (a list of lists); "
                    f"send e.g. {EXPECTED}")
        if isinstance(model_input, (list, tuple, np.ndarray, pd.Series)):
            return _text_list(list(model_input), "text"), None
        _refuse(f"expected a string, a list of strings or a DataFrame with a `text` column; got {_shown(model_input)}; "
                f"send e.g. {EXPECTED}")

    def _name(self, i: int) -> str:
        return self.labels[i] if i < len(self.labels) else str(i)

    def _rows(self, logits: np.ndarray) -> list[dict]:
        if self.kind == "regression":
            return [{"score": float(v)} for v in logits[:, 0]]
        if self.kind == "multi_label":
            probs = 1.0 / (1.0 + np.exp(-logits))
            return [{"labels": [self._name(j) for j in np.flatnonzero(p > 0.5)],
                     "probabilities": [float(x) for x in p]} for p in probs]
        z = np.exp(logits - logits.max(-1, keepdims=True))
        probs = z / z.sum(-1, keepdims=True)
        return [{"label": self._name(int(i)), "probability": float(p[i])} for i, p in zip(probs.argmax(-1), probs)]

    def _questions(self, model_input) -> tuple[list[str], list[str]]:
        """(questions, contexts) from a mapping, a list of mappings or a DataFrame; anything else refused."""
        if isinstance(model_input, pd.DataFrame):
            model_input = {c: model_input[c].tolist() for c in model_input.columns}
        if isinstance(model_input, (list, tuple)) and model_input and all(isinstance(r, dict) for r in model_input):
            model_input = {k: [r.get(k) for r in model_input] for k in ("question", "context")}
        if not isinstance(model_input, dict) or not {"question", "context"} <= set(model_input):
            got = f"the keys {sorted(map(str, model_input))[:10]}" if isinstance(model_input, dict) else _shown(model_input)
            _refuse(f"expected a question and its context; got {got}; send e.g. {EXPECTED_QA}")

        def texts(v, key):  # one string, or any sequence of them (a list, an array, a Series)
            if isinstance(v, np.ndarray):
                v = v.tolist()
            many = not isinstance(v, (str, np.str_, dict, bytes)) and hasattr(v, "__iter__")
            return _text_list(list(v) if many else [v], key)

        questions, contexts = texts(model_input["question"], "question"), texts(model_input["context"], "context")
        if len(questions) != len(contexts):
            _refuse(f"{len(questions)} questions but {len(contexts)} contexts; send one context per question")
        specials = self.tokenizer.num_special_tokens_to_add(pair=True)
        for i, q in enumerate(questions):
            if not q.strip():
                _refuse(f"input row {i}: the question is empty; send e.g. {EXPECTED_QA}")
            room = self.max_len - specials - len(self.tokenizer(q, add_special_tokens=False)["input_ids"])
            if room <= self.doc_stride:  # the windows could not advance through the context
                _refuse(f"input row {i}: the question is too long for this model's {self.max_len}-token windows; "
                        "send a shorter question")
        return questions, contexts

    def _answer(self, question: str, context: str) -> dict:
        enc = self.tokenizer(question, context, truncation="only_second", max_length=self.max_len,
                             stride=self.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                             padding=True, return_tensors="np")
        feed = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")
                if k in self.inputs and k in enc}
        if "token_type_ids" in self.inputs and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        # one window per call, without padding: int8's dynamic quantization ranges then depend on the window alone,
        # as when the export stage scored this variant (beyond a window's length: never context, never chosen)
        logits = np.zeros((*feed["input_ids"].shape, 2), dtype=np.float32)
        for w, keep in enumerate(np.asarray(enc["attention_mask"], dtype=bool)):
            logits[w, keep] = self.session.run(["logits"], {k: v[w: w + 1, keep] for k, v in feed.items()})[0][0]
        best = {"answer": "", "start": 0, "end": 0, "score": 0.0}
        top = -np.inf
        for w in range(len(logits)):
            ctx = np.array([s == 1 for s in enc.sequence_ids(w)])
            if not ctx.any():
                continue
            s, e = np.where(ctx, logits[w, :, 0], -np.inf), np.where(ctx, logits[w, :, 1], -np.inf)
            pairs = s[:, None] + e[None, :]
            i, j = np.indices(pairs.shape)
            pairs[(j < i) | (j - i >= self.max_answer_len)] = -np.inf
            a, b = divmod(int(np.argmax(pairs)), pairs.shape[1])
            if pairs[a, b] > top:
                top = pairs[a, b]
                ps, pe = np.exp(s - s.max()), np.exp(e - e.max())
                start, end = int(enc["offset_mapping"][w][a][0]), int(enc["offset_mapping"][w][b][1])
                best = {"answer": context[start:end], "start": start, "end": end,
                        "score": float(ps[a] / ps.sum() * pe[b] / pe.sum())}
        return best

    def predict(self, context, model_input, params=None):
        qa = self.kind == "extractive_qa"
        # refusals: MlflowException, a short JSON error; QA's pairs are the contexts of its questions
        texts, pairs = self._questions(model_input) if qa else self._texts(model_input)
        try:
            if qa:
                return pd.DataFrame([self._answer(q, c) for q, c in zip(texts, pairs)],
                                    columns=["answer", "start", "end", "score"])
            return self._predict(texts, pairs)
        except Exception as exc:  # noqa: BLE001 - the caller gets one line, the server log the traceback
            _log.exception("prediction failed on %d text(s)", len(texts))
            raise MlflowException(f"the model failed on this request ({type(exc).__name__}); the server log has the "
                                  "details", error_code=INTERNAL_ERROR) from None

    def _entities(self, text: str) -> dict:
        from seqeval.metrics.sequence_labeling import get_entities

        spans = [m.span() for m in WORD.finditer(text)]
        if not spans:
            return {"entities": []}
        enc = self.tokenizer([text[a:b] for a, b in spans], is_split_into_words=True, truncation=True,
                             max_length=self.max_len, return_tensors="np")
        feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in self.inputs}
        if "token_type_ids" in self.inputs and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        logits = self.session.run(["logits"], feed)[0][0]
        z = np.exp(logits - logits.max(-1, keepdims=True))
        probs = z / z.sum(-1, keepdims=True)
        first: dict[int, int] = {}
        for pos, w in enumerate(enc.word_ids(0)):
            if w is not None and w not in first:
                first[w] = pos
        # a word without a sub-token (dropped by the tokenizer, or past max_seq_len) is outside every entity
        tags = [self._name(int(probs[first[w]].argmax())) if w in first else "O" for w in range(len(spans))]
        score = [float(probs[first[w]].max()) if w in first else 0.0 for w in range(len(spans))]
        return {"entities": [{"text": text[spans[s][0]: spans[e][1]], "label": label, "start": spans[s][0],
                              "end": spans[e][1], "score": float(np.mean(score[s: e + 1]))}
                             for label, s, e in get_entities(tags)]}

    def _predict(self, texts: list[str], pairs: list[str] | None):
        if self.kind == "token_classification":
            return pd.DataFrame([self._entities(t) for t in texts])
        rows = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[s: s + self.batch_size], pairs[s: s + self.batch_size] if pairs else None,
                                 truncation=True, max_length=self.max_len, padding=True, return_tensors="np")
            feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in self.inputs}
            if "token_type_ids" in self.inputs and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            rows += self._rows(self.session.run(["logits"], feed)[0])
        return pd.DataFrame(rows)


mlflow.models.set_model(OnnxTextClassifier())
