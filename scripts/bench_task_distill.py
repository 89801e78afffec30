"""Task-distillation throughput: teacher all-MiniLM-L6-v2 -> 3-layer x 192 student, batch 32, sequence 64.

Prints examples/s of training steps for fp32 vs bf16 autocast, with the teacher running every step vs the teacher
output cache (teacher logits computed once before training; its one-off cost is printed separately).
Usage: .venv/bin/python scripts/bench_task_distill.py [--steps 20] [--threads 2]
"""

import argparse
import time

import torch
from datasets import Dataset
from transformers import BertForSequenceClassification

from kdistill.models import resolve_teacher, tinybert_config
from kdistill.objectives import Prediction, teacher_logits
from kdistill.trainer import pad_collate

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--seq", type=int, default=64)
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

teacher = BertForSequenceClassification.from_pretrained(resolve_teacher("offline:all-MiniLM-L6-v2"), num_labels=2).eval()
n = args.batch * args.steps
ds = Dataset.from_dict(
    {"input_ids": torch.randint(1000, 20000, (n, args.seq)).tolist(), "labels": [i % 2 for i in range(n)], "row": list(range(n))}
)
batches = [pad_collate([ds[i] for i in range(s, s + args.batch)]) for s in range(0, n, args.batch)]
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, seq {args.seq}, {args.steps} steps")

for bf16 in (False, True):
    for cached in (False, True):
        torch.manual_seed(0)
        student = BertForSequenceClassification(tinybert_config(teacher.config, 3, 192, 12, 768))
        student.config.num_labels = 2
        pre = 0.0
        cache = None
        if cached:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                cache = teacher_logits(teacher, ds, pad_collate, batch_size=args.batch)
            pre = time.perf_counter() - t0
        obj = Prediction(student, teacher, {"pred": 1.0}, temperature=1.0, cached_logits=cache).train()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)

        def step(b):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = obj(b)["pred"]
            loss.backward()
            opt.step()
            opt.zero_grad()

        for b in batches[:3]:
            step(b)  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            step(b)
        dt = time.perf_counter() - t0
        print(
            f"{'bf16' if bf16 else 'fp32'}  {'cache   ' if cached else 'no cache'}  {n / dt:8.1f} examples/s"
            + (f"  (one-off teacher pass over {n} examples: {pre:.1f} s = {n / pre:.0f} examples/s)" if cached else "")
        )
