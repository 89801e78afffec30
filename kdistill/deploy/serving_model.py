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

    def predict(self, context, model_input, params=None):
        texts, pairs = self._texts(model_input)  # refusals: MlflowException, a short JSON error
        try:
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
