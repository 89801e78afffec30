"""Task-distillation throughput on this machine: fp32 vs bf16 vs what `precision: auto` picks here.

Teacher all-MiniLM-L6-v2 -> 3-layer x 192 student, batch 32, sequence 64: examples/s of training steps with the
teacher running every step and with the teacher-logit cache (its one-off pass printed separately). The precisions are
measured in interleaved rounds so that the machine's noise hits them alike. On a CPU without native bf16 (AVX2) the
bf16 rows show why `auto` picks fp32 there.
Usage: .venv/bin/python benchmarks/bench_task_distill.py [--steps 10] [--rounds 2] [--threads auto]
"""

import argparse
import time

import torch
from datasets import Dataset
from transformers import BertForSequenceClassification

from kdistill.distill.objectives import Prediction, teacher_logits
from kdistill.models import load_model, resolve_teacher, tinybert_config
from kdistill.train.precision import (
    autocast,
    cpu_capability,
    native_cpu_bf16,
    resolve_precision,
    resolve_threads,
)
from kdistill.train.trainer import pad_collate

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--threads", default="auto")
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--seq", type=int, default=64)
args = ap.parse_args()
torch.set_num_threads(resolve_threads(args.threads if args.threads == "auto" else int(args.threads)))
auto = resolve_precision("auto", "cpu")
print(f"CPU capability {cpu_capability()}, native bf16: {native_cpu_bf16()} -> precision auto = {auto}")
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, seq {args.seq}, "
      f"{args.steps} steps x {args.rounds} interleaved rounds")

torch.manual_seed(0)
teacher = load_model(BertForSequenceClassification, resolve_teacher("offline:all-MiniLM-L6-v2"), num_labels=2).eval()
n = args.batch * args.steps
ds = Dataset.from_dict(
    {"input_ids": torch.randint(1000, 20000, (n, args.seq)).tolist(), "labels": [i % 2 for i in range(n)], "row": list(range(n))}
)
batches = [pad_collate([ds[i] for i in range(s, s + args.batch)]) for s in range(0, n, args.batch)]


def measure(precision: str, cached: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    student = BertForSequenceClassification(tinybert_config(teacher.config, 3, 192, 12, 768))
    pre, cache = 0.0, None
    if cached:
        t0 = time.perf_counter()
        cache = teacher_logits(teacher, ds, pad_collate, batch_size=args.batch, precision=precision)
        pre = time.perf_counter() - t0
    obj = Prediction(student, teacher, {"pred": 1.0}, temperature=1.0, cached_logits=cache).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def step(b):
        with autocast(precision, "cpu"):
            loss = obj(b)["pred"]
        loss.backward()
        opt.step()
        opt.zero_grad()

    for b in batches[:2]:
        step(b)  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        step(b)
    return n / (time.perf_counter() - t0), (n / pre if pre else 0.0)


cells = [(p, c) for p in ("fp32", "bf16") for c in (False, True)]
rates: dict = {cell: [] for cell in cells}
for _ in range(args.rounds):
    for cell in cells:
        rates[cell].append(measure(*cell))
for (prec, cached), rs in rates.items():
    best = max(r[0] for r in rs)
    tag = " <- auto" if prec == auto else ""
    extra = f"  (one-off teacher pass: {max(r[1] for r in rs):.0f} examples/s)" if cached else ""
    print(f"{prec}  {'cache   ' if cached else 'no cache'}  {best:8.1f} examples/s{tag}{extra}")
fp32 = max(r[0] for r in rates[("fp32", True)])
bf16 = max(r[0] for r in rates[("bf16", True)])
print(f"bf16 / fp32 with the cache: {bf16 / fp32:.2f}x; auto ({auto}) runs at "
      f"{(bf16 if auto == 'bf16' else fp32):.1f} examples/s")
