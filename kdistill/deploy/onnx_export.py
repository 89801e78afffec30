"""ONNX export of a sequence classifier, dynamic int8 quantization, and the parity check against PyTorch.

Exporter: torch.onnx (the dynamo exporter, torch's maintained path). Hugging Face Optimum's exporter was the other
candidate; optimum-onnx pins transformers<4.58 and this project pins transformers 5, so it cannot be installed
beside it. The exported graph is then fused (`onnx_fusion.fuse_bert`: one Attention kernel per layer, GELU with its
bias, residual + LayerNorm), since ONNX Runtime's own load-time passes (ORT_ENABLE_ALL) fuse LayerNorm but neither
attention nor GELU on these graphs.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from kdistill.errors import KdistillError
from kdistill.families import reads_token_types
from kdistill.models import SpanLogits, load_model
from kdistill.data.batches import row_lengths
from kdistill.train.evaluation import by_length

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class ParityError(KdistillError):
    """An exported model that does not compute what the PyTorch model computes."""


def load_for_export(model_dir: str | Path):
    """The model saved in `model_dir` (a token classifier or a QA model when its config says so), eager attention."""
    import json

    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    arch = json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or []
    if any(a.endswith("ForQuestionAnswering") for a in arch):  # one output, logits [batch, tokens, 2]: start, end
        return SpanLogits(load_model(AutoModelForQuestionAnswering, model_dir, attn_implementation="eager")).eval()
    cls = (AutoModelForTokenClassification if any(a.endswith("ForTokenClassification") for a in arch)
           else AutoModelForSequenceClassification)
    # eager attention: plain matmul/softmax ops, which every ONNX opset and ORT's attention fusion understand
    return load_model(cls, model_dir, attn_implementation="eager").eval()


def export_onnx(model, path: str | Path, opset: int = 18) -> Path:
    """Export `model` (BERT-family classifier) to one self-contained .onnx file, dynamic batch and sequence axes."""
    path = Path(path)
    # the exporter logs one warning per torchvision op it cannot register; no torchvision op is in a BERT
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    ids = torch.randint(5, 100, (2, 8))
    # a family without token types (DistilBERT, ModernBERT, MPNet) takes other arguments third: two inputs only
    inputs = INPUTS if reads_token_types(model) else INPUTS[:2]
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))[: len(inputs)]
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("seq", min=1, max=model.config.max_position_embeddings)
    dims = tuple({0: batch, 1: seq} for _ in inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter warns about renamed axes it merges; nothing actionable
        program = torch.onnx.export(model, example, dynamic_shapes=dims, input_names=list(inputs),
                                    output_names=["logits"], opset_version=opset, dynamo=True, verbose=False)
        program.save(str(path), external_data=False)
    proto = onnx.load(str(path))
    _strip_source_locations(proto)
    onnx.save(proto, str(path))
    return path


def _strip_source_locations(proto) -> None:
    """Drop what the exporter records about where each node came from (Python stack traces with this machine's
    absolute paths, module names): the same weights then give the same bytes in any clone, and nothing reads them."""
    def graph(g) -> None:
        for n in g.node:
            del n.metadata_props[:]
            n.doc_string = ""
            for a in n.attribute:
                if a.HasField("g"):
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)
        for v in (*g.input, *g.output, *g.value_info, *g.initializer):
            del v.metadata_props[:]
            v.doc_string = ""
        del g.metadata_props[:]
        g.doc_string = ""

    graph(proto.graph)
    for f in proto.functions:
        for n in f.node:
            del n.metadata_props[:]
            n.doc_string = ""
    del proto.metadata_props[:]
    proto.doc_string = ""


def quantize_int8(src: str | Path, dst: str | Path, per_channel: bool = True, reduce_range: bool = False) -> Path:
    """Dynamic int8 quantization (weights int8 ahead of time, activations quantized per call): ONNX Runtime's."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # DefaultTensorType: shape inference cannot type every MatMul output of the exported graph; they are all float
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=reduce_range, extra_options={"DefaultTensorType": 1})
    return Path(dst)


# ONNX Runtime load-time fusions left off: its CPU SkipLayerNormalization kernel (residual + LayerNorm in one) runs
# 5-6x slower than the Add and LayerNormalization it replaces (`make bench-onnx-kernels`; ORT 1.32, AVX2).
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def session(path: str | Path, threads: int, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session with every graph optimization but DISABLED_OPTIMIZERS and `threads` intra-op
    threads (profiling to `<profile_prefix>_*.json` when given)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling, so.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS)


def run_session(sess, input_ids, attention_mask, token_type_ids=None) -> np.ndarray:
    """Logits from a session for int64 arrays [batch, seq] (token_type_ids default to zeros)."""
    names = {i.name for i in sess.get_inputs()}
    feed = {"input_ids": np.asarray(input_ids, dtype=np.int64), "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
    if "token_type_ids" in names:
        feed["token_type_ids"] = (np.zeros_like(feed["input_ids"]) if token_type_ids is None
                                  else np.asarray(token_type_ids, dtype=np.int64))
    return sess.run(["logits"], feed)[0]


def predict_onnx(sess, dataset, batch_size: int = 64) -> np.ndarray:
    """Logits for every row of a tokenised split, in row order (batched by length, like evaluation.predict; per token:
    zeros past each row's own length, whatever the batch)."""
    out = None
    for idx, rows in by_length(dataset, batch_size):
        width = max(len(x) for x in rows["input_ids"])
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask, types = np.zeros_like(ids), np.zeros_like(ids)
        segments = rows.get("token_type_ids") or [[0] * len(x) for x in rows["input_ids"]]  # RoBERTa: no segments
        for i, (x, t) in enumerate(zip(rows["input_ids"], segments)):
            ids[i, : len(x)], mask[i, : len(x)], types[i, : len(t)] = x, 1, t
        logits = run_session(sess, ids, mask, types)
        if out is None:  # per token: padded to the longest row with zeros, as evaluation.predict does
            out = (np.zeros((len(dataset), int(row_lengths(dataset).max()), logits.shape[-1]), dtype=np.float32)
                   if logits.ndim == 3 else np.empty((len(dataset), logits.shape[-1]), dtype=np.float32))
        if logits.ndim == 3:  # each row's own tokens only: what a padded position holds depends on the batch
            for k, i in enumerate(idx):
                out[i, : len(rows["input_ids"][k])] = logits[k, : len(rows["input_ids"][k])]
        else:
            out[idx] = logits
    return out


@dataclass
class Parity:
    """How an exported model's logits compare with PyTorch's over a whole split."""

    rows: int
    max_abs_diff: float
    labels_differing: int  # classification: rows (token classification: tokens) whose argmax differs; regression 0

    def check(self, name: str, atol: float) -> None:
        if not np.isfinite(self.max_abs_diff) or self.max_abs_diff > atol or self.labels_differing:
            raise ParityError(
                f"{name}: ONNX fp32 export fails parity with PyTorch over {self.rows} dev rows: max |logit diff| "
                f"{self.max_abs_diff:.2e} (export.parity_atol is {atol:.0e}), {self.labels_differing} predicted "
                "labels differ; the export is wrong for this model (set KDISTILL_DEBUG=1 and report it)")


def parity(reference: np.ndarray, exported: np.ndarray, regression: bool, span: bool = False) -> Parity:
    """`span` (extractive QA, [rows, tokens, 2]): what may differ is each window's most likely start and end token."""
    diff = float(np.abs(reference.astype(np.float64) - exported.astype(np.float64)).max()) if len(reference) else 0.0
    axis = 1 if span else -1
    differ = 0 if regression else int((reference.argmax(axis) != exported.argmax(axis)).sum())
    return Parity(rows=len(reference), max_abs_diff=diff, labels_differing=differ)


def file_mb(path: str | Path) -> float:
    return os.path.getsize(path) / 2**20
