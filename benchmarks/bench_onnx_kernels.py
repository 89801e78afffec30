"""Residual + LayerNorm in ONNX Runtime: the fused SkipLayerNormalization kernel against Add + LayerNormalization,
on this CPU. `make bench-onnx-kernels` (HIDDEN="192 384" TOKENS=64 REPEATS=500, 1 intra-op thread).

Why it exists: the export keeps the pair unfused and sessions turn ORT's SkipLayerNormFusion off
(kdistill.deploy.onnx_export.DISABLED_OPTIMIZERS) because the fused CPU kernel measured several times slower. That is a
property of ORT's kernels and of the CPU, so this prints the numbers for the machine at hand.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

CHAIN = 12  # ops per graph, so per-run overhead is spread over many kernels


def graph(fused: bool, hidden: int, tokens: int) -> bytes:
    """CHAIN residual + LayerNorm blocks on [1, tokens, hidden], either one fused kernel each or Add then LayerNorm."""
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.random(hidden, dtype=np.float32), name) for name in ("gamma", "beta")]
    nodes, cur = [], "x"
    for i in range(CHAIN):
        if fused:
            nodes.append(helper.make_node("SkipLayerNormalization", [cur, "skip", "gamma", "beta"], [f"y{i}"],
                                          domain="com.microsoft", epsilon=1e-12))
        else:
            nodes.append(helper.make_node("Add", [cur, "skip"], [f"sum{i}"]))
            nodes.append(helper.make_node("LayerNormalization", [f"sum{i}", "gamma", "beta"], [f"y{i}"], axis=-1,
                                          epsilon=1e-12))
        cur = f"y{i}"
    shape = [1, tokens, hidden]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip", cur)]
    g = helper.make_graph(nodes, "residual_layernorm", io[:2], io[2:], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(g, opset_imports=opsets).SerializeToString()


def microseconds_per_op(model: bytes, hidden: int, tokens: int, repeats: int, disabled: list[str]) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    rng = np.random.default_rng(1)
    feed = {n: rng.random((1, tokens, hidden), dtype=np.float32) for n in ("x", "skip")}
    for _ in range(repeats // 10):
        sess.run(None, feed)
    t0 = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, feed)
    return (time.perf_counter() - t0) / repeats / CHAIN * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, nargs="+", default=[192, 384])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=500)
    a = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, 1 intra-op thread, "
          f"{a.tokens} tokens, best of 3 rounds")
    print("| hidden | SkipLayerNormalization us | Add + LayerNormalization us | fused / unfused |")
    print("|---|---|---|---|")
    for h in a.hidden:
        fused, plain = graph(True, h, a.tokens), graph(False, h, a.tokens)
        f = u = float("inf")
        for _ in range(3):  # rounds interleaved, so that machine noise hits both alike
            f = min(f, microseconds_per_op(fused, h, a.tokens, a.repeats, []))
            # SkipLayerNormFusion off, or the session fuses the pair back into the kernel it is compared with
            u = min(u, microseconds_per_op(plain, h, a.tokens, a.repeats, ["SkipLayerNormFusion"]))
        print(f"| {h} | {f:.1f} | {u:.1f} | {f / u:.2f}x |")


if __name__ == "__main__":
    main()
