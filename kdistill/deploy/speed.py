"""CPU speed and size: latency percentiles after warm-up, throughput, parameters, analytic FLOPs, size on disk."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from kdistill.distill.attention import self_attention_modules
from kdistill.models import count_parameters, output_logits
from kdistill.train.precision import autocast


def token_id_range(vocab: int) -> tuple[int, int]:
    """Token ids for timing: past the special tokens of a real vocabulary, any id of a tiny one."""
    return (1000 if vocab > 2000 else 0), min(vocab, 20000)


def _summary(times_ms: list[float], batch: int) -> dict[str, float]:
    t = np.array(times_ms)
    return {"p50": float(np.percentile(t, 50)), "p95": float(np.percentile(t, 95)),
            "throughput": float(batch / (np.median(t) / 1000))}


@torch.no_grad()
def flops_per_example(model, seq: int) -> int:
    """Forward FLOPs (2 per multiply-add) for one sequence of `seq` tokens, counted while the model runs.

    Every nn.Linear that executes adds 2 x tokens x in x out, so any architecture (BERT, MobileBERT's bottlenecks
    and stacked FFNs, the classifier) is counted as it really computes; each attention layer adds QK^T and AV,
    2 x 2 x seq^2 x its query width. Embedding lookups, norms and activations are not counted.
    """
    total = 0

    def add(mod, inp, _out):
        nonlocal total
        total += 2 * (inp[0].numel() // mod.in_features) * mod.in_features * mod.out_features

    hooks = [m.register_forward_hook(add) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        ids = torch.ones((1, seq), dtype=torch.long, device=next(model.parameters()).device)
        was_training = model.training
        model.eval()
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    for attn in self_attention_modules(model):  # Q.K^T and the weighted sum of values: heads x head width each
        heads = next(getattr(attn, k) for k in ("num_attention_heads", "n_heads", "num_heads") if hasattr(attn, k))
        width = next((getattr(attn, k) for k in ("attention_head_size", "head_dim") if hasattr(attn, k)), None)
        total += 2 * 2 * seq * seq * heads * (width or attn.dim // heads)
    return int(total)


def size_mb(model_dir: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) / 2**20


def model_profile(model, model_dir, seq_lens) -> dict:
    """What a model costs whatever the machine: parameters, size on disk, forward FLOPs per example at each length."""
    return {"params": count_parameters(model), "params_no_embeddings": count_parameters(model, embeddings=False),
            "size_mb": round(size_mb(model_dir), 2), "flops": {f"seq{s}": flops_per_example(model, s) for s in seq_lens}}


def interleaved_profiles(models: dict, batch_sizes, seq_lens, warmup: int, repeats: int,
                         precision: str = "fp32") -> dict[str, dict]:
    """Eager PyTorch latency (p50/p95 ms) and throughput of every model at each batch x length, measured in turns
    (`interleaved_latency`): a stage running beside the measurement slows every model alike, so the speedups
    (ratios) stay true even when the absolute times do not."""
    runners = {n: torch_runner(m, precision) for n, m in models.items()}
    vocab = min(m.config.vocab_size for m in models.values())
    out = {n: {"latency_ms": {}, "throughput": {}} for n in models}
    for s in seq_lens:
        for b in batch_sizes:
            for n, r in interleaved_latency(runners, b, s, warmup, repeats, vocab=vocab).items():
                out[n]["latency_ms"][f"bs{b}_seq{s}_p50"] = round(r["p50"], 3)
                out[n]["latency_ms"][f"bs{b}_seq{s}_p95"] = round(r["p95"], 3)
                out[n]["throughput"][f"bs{b}_seq{s}"] = round(r["throughput"], 1)
    return out


def interleaved_latency(runners: dict, batch: int, seq: int, warmup: int = 3, repeats: int = 20,
                        max_seconds: float | None = None, vocab: int = 30522, seed: int = 0) -> dict[str, dict]:
    """Latency of several ways to run a model on the same inputs, measured in turns so that machine noise (another
    process, frequency changes) hits every runner alike: each round calls every runner once, in a shuffled order.

    runners: name -> callable(input_ids, attention_mask) on int64 numpy arrays [batch, seq].
    Stops after `repeats` rounds, or earlier once `max_seconds` have passed (never before 5 rounds).
    Returns name -> {p50, p95, throughput, rounds}.
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(*token_id_range(vocab), size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    names = list(runners)
    for _ in range(warmup):
        for n in names:
            runners[n](ids, mask)
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(repeats):
        for n in rng.permutation(names):
            t0 = time.perf_counter()
            runners[n](ids, mask)
            times[n].append((time.perf_counter() - t0) * 1000)
        if max_seconds is not None and r + 1 >= 5 and time.perf_counter() - start > max_seconds:
            break
    return {n: {**_summary(ts, batch), "rounds": len(ts)} for n, ts in times.items()}


def torch_runner(model, precision: str = "fp32"):
    """A callable(input_ids, attention_mask) running a PyTorch model eagerly under a resolved precision."""

    @torch.inference_mode()
    def run(ids, mask):
        with autocast(precision, next(model.parameters()).device):
            return output_logits(model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)))

    model.eval()
    return run


# ONNX Runtime operators whose cost is the matrix products that the FLOPs count (fp32 and int8 forms)
GEMM_OPS = frozenset({"MatMul", "Gemm", "FusedGemm", "FusedMatMul", "Attention", "MatMulInteger",
                      "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"})


def speedup_ceiling(teacher_ms: float, teacher_ops: dict[str, float], student_ms: float, student_ops: dict[str, float],
                    flops_reduction: float) -> float:
    """The student's speedup over the teacher if its matrix products took exactly the teacher's time divided by
    `flops_reduction` while the rest of its run (per-element kernels, per-run overhead) stayed as profiled.

    `*_ms`: time per run; `*_ops`: time per run by operator type (ONNX Runtime's profiler). A ceiling under a target
    share of the FLOPs reduction means no faster matrix-product kernel can reach it: the rest must shrink."""
    if flops_reduction <= 0 or teacher_ms <= 0 or student_ms <= 0:
        raise ValueError("times and the FLOPs reduction must be positive")
    t_gemm = sum(ms for op, ms in teacher_ops.items() if op in GEMM_OPS)
    s_gemm = sum(ms for op, ms in student_ops.items() if op in GEMM_OPS)
    return teacher_ms / (student_ms - s_gemm + t_gemm / flops_reduction)
