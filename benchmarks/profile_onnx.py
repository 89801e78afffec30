"""Where an exported model's time goes: ONNX Runtime's own profiler over N runs at one shape, per operator type
(ms per run and share of the run). `make profile-onnx` (MODELS="teacher tinybert" BATCH=1 SEQ=64 RUNS=200); reads
`outputs/onnx/<model>/model.onnx` (the export stage writes them). The speed gap between a student and the teacher
that the FLOPs do not explain shows up here as per-element kernels and attention taking a larger share.

With the teacher among the models, each student also gets its ceiling: the speedup it would reach if its matrix
products (MatMul, Attention and their int8 forms) ran exactly FLOPs-reduction times faster than the teacher's while
its per-element kernels and the per-run overhead stayed as measured. A ceiling under a target share says that no
GEMM or attention kernel can reach it on this CPU: only fewer per-element kernels (fusion) or a different shape can."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from kdistill.deploy.onnx_export import run_session, session
from kdistill.deploy.speed import flops_per_example, speedup_ceiling
from kdistill.models import load_model

ROOT = Path(__file__).resolve().parent.parent


def profile(path: Path, batch: int, seq: int, runs: int, threads: int) -> tuple[float, Counter]:
    """(mean ms per run, ms per run by operator type) from ONNX Runtime's profiler."""
    sess = session(path, threads, profile_prefix=str(Path("/tmp") / f"kdistill-profile-{os.getpid()}"))
    ids = np.random.default_rng(0).integers(1000, 2000, (batch, seq))
    for _ in range(runs):
        run_session(sess, ids, np.ones_like(ids))
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    by_op: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    total = sum(e["dur"] for e in events if e.get("name") == "model_run") / 1000 / runs
    return total, by_op


def flops_reduction(name: str, seq: int) -> float | None:
    """Teacher FLOPs / student FLOPs at `seq` tokens, counted on the PyTorch checkpoints the export read."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    dirs = {"teacher": ROOT / "outputs" / "teacher", name: ROOT / "outputs" / "students" / name}
    if not all(d.is_dir() for d in dirs.values()):
        return None
    f = {k: flops_per_example(load_model(AutoModelForSequenceClassification, d).eval(), seq) for k, d in dirs.items()}
    return f["teacher"] / f[name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--onnx", default=str(ROOT / "outputs" / "onnx"))
    ap.add_argument("--models", nargs="+", default=["teacher", "tinybert"])
    ap.add_argument("--variant", default="model.onnx", help="model.onnx (fp32) or model.int8.onnx")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, batch {args.batch} x {args.seq} tokens, "
          f"{args.threads} intra-op thread(s), {args.runs} runs, {args.variant}")
    results: dict[str, tuple[float, Counter]] = {}
    for name in args.models:
        path = Path(args.onnx) / name / args.variant
        if not path.is_file():
            raise SystemExit(f"error: {path}: missing; run the export stage first (make pipeline)")
        total, by_op = profile(path, args.batch, args.seq, args.runs, args.threads)
        results[name] = (total, by_op)
        print(f"\n{name}: {total:.2f} ms per run")
        for op, ms in by_op.most_common(8):
            print(f"  {op:28s} {ms:7.3f} ms  {ms / total:6.1%}")
        rest = total - sum(by_op.values())
        print(f"  {'(per-run overhead)':28s} {rest:7.3f} ms  {rest / total:6.1%}")
    if "teacher" not in results:
        return
    for name, res in results.items():
        reduction = None if name == "teacher" else flops_reduction(name, args.seq)
        if reduction is None:
            continue
        speedup = results["teacher"][0] / res[0]
        top = speedup_ceiling(*results["teacher"], *res, reduction)
        print(f"\n{name} vs teacher: FLOPs reduction {reduction:.2f}x; measured {speedup:.2f}x = "
              f"{speedup / reduction:.0%} of it; ceiling with FLOPs-exact matrix products {top:.2f}x = {top / reduction:.0%}")


if __name__ == "__main__":
    main()
