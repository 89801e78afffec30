"""A profile's teacher against its students of the TinyBERT and MiniLM shapes, timed on this CPU without training
them: `make bench-speed PROFILE=mpnet` (RECIPES="tinybert minilm", SEQ=64, THREADS="1 2").

The models are built from the profile's params (the teacher's own config, the students' shapes in the teacher's
family, as the general stage builds them) with random weights: latency does not depend on the weights, so the figures
are those the evaluate stage would measure for the trained models on this machine (eager PyTorch, batch 1, timed in
turns with `interleaved_profiles`), at each precision this CPU can run: fp32, and bf16 where it is native
(AVX512-BF16/AMX; emulated bf16 on AVX2 is about 20x slower and would say nothing about a deployment). The teacher
must be on disk (`make setup-mpnet` for the mpnet profile); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kdistill.config import load_params  # noqa: E402
from kdistill.deploy.speed import flops_per_example, interleaved_profiles  # noqa: E402
from kdistill.models import count_parameters, teacher_config, tinybert_config  # noqa: E402
from kdistill.train.precision import resolve_precision  # noqa: E402


def build(profile: str, recipes: list[str]) -> dict:
    p = load_params(ROOT / ("params.yaml" if profile == "default" else f"profiles/{profile}.yaml"))
    t_cfg = teacher_config(p.base.teacher)
    t_cfg.num_labels = 2
    torch.manual_seed(0)
    models = {"teacher": AutoModelForSequenceClassification.from_config(t_cfg)}
    for r in recipes:
        s = getattr(p.general_distill, r).student
        cfg = tinybert_config(t_cfg, s.layers, s.hidden, s.heads, s.ffn, s.activation)
        cfg.num_labels = 2
        models[r] = AutoModelForSequenceClassification.from_config(cfg)
    return {n: m.eval() for n, m in models.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="mpnet")
    ap.add_argument("--recipes", nargs="+", default=["tinybert", "minilm"])
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    models = build(args.profile, args.recipes)
    t_flops = flops_per_example(models["teacher"], args.seq)
    print(f"profile {args.profile}; CPU capability {torch.backends.cpu.get_cpu_capability()}; batch 1 x {args.seq} "
          "tokens; eager PyTorch, p50 over interleaved rounds")
    for n, m in models.items():
        print(f"  {n}: {count_parameters(m) / 1e6:.1f}M parameters, FLOPs ratio "
              f"{flops_per_example(m, args.seq) / t_flops:.3f}")
    native_bf16 = resolve_precision("auto") == "bf16"
    for precision in ["fp32"] + (["bf16"] if native_bf16 else []):
        for threads in args.threads:
            torch.set_num_threads(threads)
            got = interleaved_profiles(models, [1], [args.seq], warmup=3, repeats=args.repeats, precision=precision)
            key = f"bs1_seq{args.seq}_p50"
            teacher = got["teacher"]["latency_ms"][key]
            cells = ", ".join(f"{n} {r['latency_ms'][key]:.2f} ms ({teacher / r['latency_ms'][key]:.2f}x)"
                              for n, r in got.items() if n != "teacher")
            print(f"{precision}, {threads} thread(s): teacher {teacher:.2f} ms; {cells}", flush=True)
    if not native_bf16:
        print("bf16: not timed (not native on this CPU)")


if __name__ == "__main__":
    main()
