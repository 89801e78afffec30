"""Graph fusions for exported BERT-family classifiers, so that ONNX Runtime runs each layer in a few kernels.

Why our own attention fusion: ONNX Runtime's transformer optimizer (`onnxruntime.transformers.optimizer`) matches the
graphs of the legacy TorchScript exporter; on torch.onnx's dynamo graphs it fuses GELU and LayerNorm but finds no
attention, so every layer keeps ~14 small kernels (three projections, reshapes, transposes, two batched matmuls,
scale, mask add, softmax) whose fixed cost weighs most on the small students at batch 1. The pattern here is the one
transformers' eager BERT attention exports to, matched strictly; anything else is left as it is.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS = "com.microsoft"


class _Graph:
    """Producers, consumers and constant initializers of one ONNX graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.g = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.init = {i.name: i for i in graph.initializer}

    def parent(self, node, index: int, op: str):
        p = self.producer.get(node.input[index]) if index < len(node.input) else None
        return p if p is not None and p.op_type == op else None

    def only_child(self, name: str, op: str):
        c = self.consumers.get(name, [])
        return c[0] if len(c) == 1 and c[0].op_type == op else None

    def const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.init[name]) if name in self.init else None


def _perm(node) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _projection(G: _Graph, node, perm: list[int]):
    """Transpose(perm) <- Reshape <- Add(bias) <- MatMul(x, W): (x, W, b) with W [in, out] and b [out] constants."""
    t = node if node is not None and node.op_type == "Transpose" and _perm(node) == perm else None
    r = G.parent(t, 0, "Reshape") if t is not None else None
    add = G.parent(r, 0, "Add") if r is not None else None
    if add is None:
        return None
    for mm_i, b_i in ((0, 1), (1, 0)):
        mm = G.parent(add, mm_i, "MatMul")
        b = G.const(add.input[b_i])
        if mm is not None and b is not None and b.ndim == 1:
            w = G.const(mm.input[1])
            if w is not None and w.ndim == 2 and w.shape[1] == b.shape[0]:
                return mm.input[0], w, b
    return None


def _attention_at(G: _Graph, softmax, num_heads: int):
    """The Attention node replacing the eager attention around `softmax`, or None when the pattern differs."""
    add = G.parent(softmax, 0, "Add")
    if add is None:
        return None
    for s_i in (0, 1):  # Add(scaled scores, additive mask) in either order
        scaled = G.producer.get(add.input[s_i])
        if scaled is not None and scaled.op_type in ("Mul", "Div"):
            break
    else:
        return None
    factor = G.const(scaled.input[1])
    qk = G.parent(scaled, 0, "MatMul")
    if factor is None or factor.size != 1 or qk is None:
        return None
    scale = float(factor.ravel()[0]) if scaled.op_type == "Mul" else 1.0 / float(factor.ravel()[0])
    q = _projection(G, G.producer.get(qk.input[0]), [0, 2, 1, 3])
    k = _projection(G, G.producer.get(qk.input[1]), [0, 2, 3, 1])
    av = G.only_child(softmax.output[0], "MatMul")
    v = _projection(G, G.producer.get(av.input[1]), [0, 2, 1, 3]) if av is not None and av.input[0] == softmax.output[0] else None
    back = G.only_child(av.output[0], "Transpose") if av is not None else None
    merged = G.only_child(back.output[0], "Reshape") if back is not None and _perm(back) == [0, 2, 1, 3] else None
    if None in (q, k, v, merged) or not (q[0] == k[0] == v[0]):
        return None  # e.g. MobileBERT, whose values come from another tensor than its queries and keys
    hidden = q[1].shape[1]
    if hidden % num_heads or k[1].shape != q[1].shape or v[1].shape != q[1].shape:
        return None
    return q[0], np.concatenate([q[1], k[1], v[1]], axis=1), np.concatenate([q[2], k[2], v[2]]), scale, merged.output[0]


def fuse_attention(model: onnx.ModelProto, num_heads: int, mask_input: str = "attention_mask") -> int:
    """Replace each eager self-attention of `model` by one com.microsoft Attention node (in place); how many.

    The Attention kernel takes the 0/1 padding mask itself (key positions with 0 get -10000 before the softmax,
    which is exp-underflow zero like the exported mask's large negative), so the mask-building subgraph goes too."""
    G = _Graph(model.graph)
    if mask_input not in {i.name for i in model.graph.input}:
        return 0
    fused, new_nodes, new_inits = [], {}, []
    mask32 = f"{mask_input}_int32"
    for n in list(model.graph.node):
        if n.op_type != "Softmax":
            continue
        found = _attention_at(G, n, num_heads)
        if found is None:
            continue
        x, w, b, scale, out = found
        i = len(fused)
        new_inits += [numpy_helper.from_array(w.astype(np.float32), f"fused_attention_{i}.qkv_weight"),
                      numpy_helper.from_array(b.astype(np.float32), f"fused_attention_{i}.qkv_bias")]
        node = helper.make_node("Attention", [x, f"fused_attention_{i}.qkv_weight", f"fused_attention_{i}.qkv_bias", mask32],
                                [out], name=f"fused_attention_{i}", domain=MS, num_heads=num_heads, scale=scale)
        new_nodes[id(G.producer[out])] = node  # takes the place of the Reshape that produced the context
        fused.append(out)
    if not fused:
        return 0
    nodes = [_copy(new_nodes.get(id(n), n)) for n in model.graph.node]
    cast = helper.make_node("Cast", [mask_input], [mask32], name="attention_mask_to_int32", to=onnx.TensorProto.INT32)
    del model.graph.node[:]
    model.graph.node.extend([cast] + nodes)
    model.graph.initializer.extend(new_inits)
    _prune(model)
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return len(fused)


def _copy(message):
    """A detached copy: protobuf containers are cleared before they are refilled."""
    out = type(message)()
    out.CopyFrom(message)
    return out


def _prune(model: onnx.ModelProto) -> None:
    """Drop nodes and initializers no graph output depends on (the replaced attention and mask subgraphs)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    needed, stack, keep = set(), [o.name for o in g.output], set()
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        n = producer.get(name)
        if n is not None and id(n) not in keep:
            keep.add(id(n))
            stack.extend(i for i in n.input if i)
    nodes = [_copy(n) for n in g.node if id(n) in keep]
    inits = [_copy(i) for i in g.initializer if i.name in needed]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits)


def fuse_bert(src: str | Path, dst: str | Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """`src` with attention fused (ours), then bias + GELU fused (ONNX Runtime's optimizer); kernel counts."""
    import logging

    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    model = onnx.load(str(src))
    attention = fuse_attention(model, num_heads)
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    # Residual + LayerNorm stay two kernels: ONNX Runtime's CPU SkipLayerNormalization kernel is 5-6x slower than
    # Add + LayerNormalization (`make bench-onnx-kernels`); sessions also disable its load-time fusion (onnx_export).
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    # opt_level 0: only the pattern fusions here; ORT's own level-2 graph passes still run when a session loads it
    opt = optimizer.optimize_model(model, model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0,
                                   optimization_options=options)
    opt.save_model_to_file(str(dst))
    counts = Counter(n.op_type for n in opt.model.graph.node)
    return {"Attention": attention, **{k: counts[k] for k in ("BiasGelu", "SkipLayerNormalization", "LayerNormalization")}}
