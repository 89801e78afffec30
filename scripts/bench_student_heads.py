"""Does the TinyBERT-style student's head count decide how much of its FLOPs reduction it keeps in ONNX Runtime?
`make bench-heads` (HEADS="12 6 4 3", batch 1 x 64 tokens, 1 intra-op thread).

For each head count: a student of the configured shape (general_distill.tinybert.student, only the heads changed)
with random weights (latency does not depend on them), exported and fused as the export stage does, timed
interleaved against the exported teacher (outputs/onnx/teacher/model.onnx, from `make pipeline`). The FLOPs do not
change with the head count; the per-head work (softmax over 64 x 64 scores per head, small per-head products) does.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, BertForSequenceClassification

from kdistill.config import load_params
from kdistill.models import tinybert_config
from kdistill.onnx_export import export_onnx, run_session, session
from kdistill.onnx_fusion import fuse_bert
from kdistill.speed import flops_per_example, interleaved_latency

ROOT = Path(__file__).resolve().parent.parent


def runner(path: Path):
    sess = session(path, 1)
    return lambda ids, mask: run_session(sess, ids, mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--heads", type=int, nargs="+", default=[12, 6, 4, 3])
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=100)
    a = ap.parse_args()
    p = load_params(ROOT / "params.yaml")
    teacher_onnx = ROOT / "outputs" / "onnx" / "teacher" / "model.onnx"
    if not teacher_onnx.is_file():
        raise SystemExit(f"error: {teacher_onnx} is missing: run `make pipeline` first (its export stage writes it)")
    teacher_cfg = AutoConfig.from_pretrained(ROOT / "outputs" / "teacher")
    teacher = BertForSequenceClassification(teacher_cfg).eval()
    s = p.general_distill.tinybert.student
    runners, flops = {"teacher": runner(teacher_onnx)}, {"teacher": flops_per_example(teacher, a.seq)}
    with tempfile.TemporaryDirectory() as tmp:
        for h in a.heads:
            torch.manual_seed(0)
            cfg = tinybert_config(teacher_cfg, s.layers, s.hidden, h, s.ffn)
            cfg.num_labels = teacher_cfg.num_labels
            # eager attention, as the export stage loads models: the graph ORT's attention fusion matches
            model = BertForSequenceClassification._from_config(cfg, attn_implementation="eager").eval()
            path = export_onnx(model, Path(tmp) / f"heads{h}.onnx", p.export.opset)
            fuse_bert(path, path, h, s.hidden)
            name = f"{s.layers}x{s.hidden}, {h} heads of {s.hidden // h}"
            runners[name], flops[name] = runner(path), flops_per_example(model, a.seq)
        res = interleaved_latency(runners, 1, a.seq, warmup=5, repeats=a.rounds)
    t = res["teacher"]["p50"]
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, ONNX Runtime fp32 fused, batch 1 x {a.seq} tokens, "
          f"1 intra-op thread, {a.rounds} interleaved rounds")
    print("| model | p50 ms | speedup over the teacher | FLOPs reduction | share of FLOPs reduction |")
    print("|---|---|---|---|---|")
    for name, r in res.items():
        speed, reduction = t / r["p50"], flops["teacher"] / flops[name]
        print(f"| {name} | {r['p50']:.2f} | {speed:.2f}x | {reduction:.2f}x | {speed / reduction:.0%} |")


if __name__ == "__main__":
    main()
