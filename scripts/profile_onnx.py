"""Where an exported model's time goes: ONNX Runtime's own profiler over N runs at one shape, per operator type
(ms per run and share of the run). `make profile-onnx` (MODELS="teacher tinybert" BATCH=1 SEQ=64 RUNS=200); reads
`outputs/onnx/<model>/model.onnx` (the export stage writes them). The speed gap between a student and the teacher
that the FLOPs do not explain shows up here as per-element kernels and attention taking a larger share."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from kdistill.onnx_export import run_session, session

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
    for name in args.models:
        path = Path(args.onnx) / name / args.variant
        if not path.is_file():
            raise SystemExit(f"error: {path}: missing; run the export stage first (make pipeline)")
        total, by_op = profile(path, args.batch, args.seq, args.runs, args.threads)
        print(f"\n{name}: {total:.2f} ms per run")
        for op, ms in by_op.most_common(8):
            print(f"  {op:28s} {ms:7.3f} ms  {ms / total:6.1%}")


if __name__ == "__main__":
    main()
