"""Data-parallel training throughput: the default DistilBERT-style task-distillation step (3-layer x 384 student,
cached teacher logits, batch 32, SST-2 rows up to 64 tokens) with 1 process (all CPUs) and with N processes under
torchrun (the CPUs split among them), the same global batches. `make bench-ddp` (NPROC=2 STEPS=40 ROUNDS=2).

Examples/s counts optimizer steps after the first 3 (warm-up), measured in interleaved rounds; the CPU capability
is printed because every figure depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class StepClock:
    def __init__(self):
        self.times: list[float] = []

    def on_step(self, step, components, total, lr):
        self.times.append(time.perf_counter())

    def on_eval(self, step, metrics):
        pass


def worker(steps: int, batch: int, out: str) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from kdistill.data.batches import tokenize_task
    from kdistill.data.glue import load_split
    from kdistill.distill.objectives import Prediction, teacher_logits
    from kdistill.models import load_model, load_tokenizer, resolve_teacher
    from kdistill.train import distributed
    from kdistill.train.precision import resolve_threads
    from kdistill.train.trainer import Trainer, TrainerConfig, pad_collate

    w = distributed.init_from_env()
    torch.set_num_threads(resolve_threads("auto"))
    src = resolve_teacher("offline:all-MiniLM-L6-v2")
    tok = load_tokenizer("offline:all-MiniLM-L6-v2")
    rows = load_split(str(ROOT / "data/glue"), "sst2", "train").select(range(batch * steps))
    train = tokenize_task(rows, tok, 64)
    torch.manual_seed(0)
    teacher = load_model(AutoModelForSequenceClassification, src, num_labels=2).eval()
    student = load_model(AutoModelForSequenceClassification, src, num_labels=2, num_hidden_layers=3)
    with tempfile.TemporaryDirectory() as tmp:
        # every rank computes its shard of the teacher pass (the cache is not timed)
        logits = teacher_logits(teacher, train, pad_collate, cache_dir=Path(tmp) / "logits")
        obj = Prediction(student, None, {"pred": 0.5, "hard": 0.5}, temperature=2.0, t2_scaling=True, cached_logits=logits)
        clock = StepClock()
        cfg = TrainerConfig(lr=1e-4, batch_size=batch, max_steps=steps, checkpoint_every=10**9, seed=42, desc=f"{w.size} proc")
        Trainer(obj, train, cfg, Path(tmp) / "ckpt", callbacks=[clock], device=torch.device("cpu")).train()
    if w.main:
        t = clock.times
        Path(out).write_text(json.dumps({"examples_per_s": batch * (len(t) - 3) / (t[-1] - t[2]),
                                         "threads": torch.get_num_threads(), "processes": w.size}))
    distributed.shutdown()


def run(nproc: int, steps: int, batch: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        me = [str(Path(__file__).resolve()), "--worker", "--steps", str(steps), "--batch", str(batch), "--out", f.name]
        cmd = [sys.executable, *me] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                         f"--nproc-per-node={nproc}", *me]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        return json.loads(Path(f.name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.worker:
        return worker(args.steps, args.batch, args.out)
    import torch

    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs, global batch {args.batch}, "
          f"{args.steps} steps, {args.rounds} interleaved rounds")
    best: dict[int, dict] = {}
    for _ in range(args.rounds):
        for n in (1, args.nproc):
            r = run(n, args.steps, args.batch)
            if n not in best or r["examples_per_s"] > best[n]["examples_per_s"]:
                best[n] = r
    for n, r in best.items():
        print(f"{n} process(es) x {r['threads']} thread(s): {r['examples_per_s']:7.1f} examples/s")
    print(f"{args.nproc} processes / 1 process: {best[args.nproc]['examples_per_s'] / best[1]['examples_per_s']:.2f}x")


if __name__ == "__main__":
    main()
