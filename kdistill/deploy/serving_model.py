"""The registered student as an MLflow pyfunc: raw text in, labels out, computed by ONNX Runtime.

Logged as an MLflow "model from code": this file travels inside the registered model, so it imports nothing from
kdistill. Artifacts: `onnx` (the variant chosen at registration: fp32 or int8), `tokenizer` (a Hugging Face
tokenizer directory). model_config: task kind, max_seq_len, threads, the variant's name.

Input: a list of strings, or a DataFrame with a `text` column (and `text_pair` for pair tasks).
Output: a DataFrame with `label` and `probability` (classification) or `score` (regression).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd


class OnnxTextClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        cfg = context.model_config or {}
        self.max_len = int(cfg.get("max_seq_len", 128))
        self.regression = bool(cfg.get("regression", False))
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
                    raise ValueError(f"expected a `text` column (and `text_pair` for pair tasks); got {list(model_input.columns)}")
                return model_input.iloc[:, 0].astype(str).tolist(), None
            pair = model_input["text_pair"].astype(str).tolist() if "text_pair" in model_input.columns else None
            return model_input["text"].astype(str).tolist(), pair
        if isinstance(model_input, str):
            return [model_input], None
        return [str(t) for t in model_input], None

    def predict(self, context, model_input, params=None):
        texts, pairs = self._texts(model_input)
        rows = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[s: s + self.batch_size], pairs[s: s + self.batch_size] if pairs else None,
                                 truncation=True, max_length=self.max_len, padding=True, return_tensors="np")
            feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in self.inputs}
            if "token_type_ids" in self.inputs and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            logits = self.session.run(["logits"], feed)[0]
            if self.regression:
                rows += [{"score": float(v)} for v in logits[:, 0]]
            else:
                z = np.exp(logits - logits.max(-1, keepdims=True))
                probs = z / z.sum(-1, keepdims=True)
                rows += [{"label": int(i), "probability": float(p[i])} for i, p in zip(probs.argmax(-1), probs)]
        return pd.DataFrame(rows)


mlflow.models.set_model(OnnxTextClassifier())
