"""The registered student as an MLflow pyfunc: raw text in, labels out, computed by ONNX Runtime.

Logged as an MLflow "model from code": this file travels inside the registered model, so it imports nothing from
kdistill. Artifacts: `onnx` (the variant chosen at registration: fp32 or int8), `tokenizer` (a Hugging Face
tokenizer directory). model_config: task kind, max_seq_len, threads, the variant's name.

Input: a list of strings, or a DataFrame with a `text` column (and `text_pair` for pair tasks). Anything that is not
text (null, a number) is refused with one line naming the row (HTTP 400 with a JSON error from `make serve`).
Output: a DataFrame with, per kind, `label` (the task's label name) and `probability` (single-label), `labels` (the
names whose sigmoid passes 0.5) and `probabilities` (one per name; multi-label), or `score` (regression).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


def _refuse(message: str):
    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _text_list(values, column: str) -> list[str]:
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            _refuse(f"input row {i}, {column}: {v!r} is not text; send strings, e.g. {{\"inputs\": [\"a good movie\"]}}")
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
                    _refuse(f"expected a `text` column (and `text_pair` for pair tasks); got {list(model_input.columns)}")
                return _text_list(model_input.iloc[:, 0].tolist(), "text"), None
            pair = _text_list(model_input["text_pair"].tolist(), "text_pair") if "text_pair" in model_input.columns else None
            return _text_list(model_input["text"].tolist(), "text"), pair
        if isinstance(model_input, str):
            return [model_input], None
        if isinstance(model_input, (list, tuple, np.ndarray, pd.Series)):
            return _text_list(list(model_input), "text"), None
        _refuse(f"expected a list of strings or a DataFrame with a `text` column; got {type(model_input).__name__}")

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
        texts, pairs = self._texts(model_input)
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
