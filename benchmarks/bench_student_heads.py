"""Do the TinyBERT-style student's head count and activation decide how much of its FLOPs reduction it keeps in ONNX
Runtime? `make bench-heads` (HEADS="12 6 4 3", ACTS="gelu relu", batch 1 x 64 tokens, 1 intra-op thread).

For each head count and activation: a student of the configured shape (general_distill.tinybert.student, only the
heads and the activation changed) with random weights (latency does not depend on them), exported and fused as the
export stage does, timed interleaved against the exported teacher (outputs/onnx/teacher/model.onnx from `make
pipeline`, or, on a clone without outputs, the configured teacher's architecture with random weights, exported the
same way). The FLOPs do not change with either: the per-head work (softmax over 64 x 64 scores per head, small
per-head products) and the per-element cost of the activation (GELU's erf against ReLU's max) do.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, BertForSequenceClassification

from kdistill.config import load_params
from kdistill.deploy.onnx_export import export_onnx, run_session, session
from kdistill.deploy.onnx_fusion import fuse_bert
from kdistill.deploy.speed import flops_per_example, interleaved_latency
from kdistill.models import resolve_teacher, tinybert_config

ROOT = Path(__file__).resolve().parent.parent


def runner(path: Path):
    sess = session(path, 1)
    return lambda ids, mask: run_session(sess, ids, mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--heads", type=int, nargs="+", default=[12, 6, 4, 3])
    ap.add_argument("--activations", nargs="+", default=["gelu", "relu"], choices=["gelu", "relu"])
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=100)
    a = ap.parse_args()
    p = load_params(ROOT / "params.yaml")
    teacher_onnx = ROOT / "outputs" / "onnx" / "teacher" / "model.onnx"
    trained = teacher_onnx.is_file()
    teacher_cfg = AutoConfig.from_pretrained(ROOT / "outputs" / "teacher" if trained else resolve_teacher(p.base.teacher))
    if not trained:
        teacher_cfg.num_labels = 2  # the pre-trained teacher has no task head yet: a binary one, as SST-2's
    s = p.general_distill.tinybert.student
    with tempfile.TemporaryDirectory() as tmp:

        def exported(cfg, name: str):
            torch.manual_seed(0)
            # eager attention, as the export stage loads models: the graph our attention fusion matches
            model = BertForSequenceClassification._from_config(cfg, attn_implementation="eager").eval()
            path = export_onnx(model, Path(tmp) / f"{name}.onnx", p.export.opset)
            fuse_bert(path, path, cfg.num_attention_heads, cfg.hidden_size)
            return runner(path), flops_per_example(model, a.seq)

        if trained:
            runners = {"teacher": runner(teacher_onnx)}
            flops = {"teacher": flops_per_example(BertForSequenceClassification(teacher_cfg), a.seq)}
        else:
            print(f"{teacher_onnx} is missing (no `make pipeline` yet): timing the teacher's architecture with random weights")
            runner_t, flops_t = exported(teacher_cfg, "teacher")
            runners, flops = {"teacher": runner_t}, {"teacher": flops_t}
        for act in a.activations:
            for h in a.heads:
                cfg = tinybert_config(teacher_cfg, s.layers, s.hidden, h, s.ffn, act)
                cfg.num_labels = teacher_cfg.num_labels
                name = f"{s.layers}x{s.hidden}, {h} heads of {s.hidden // h}, {act}"
                runners[name], flops[name] = exported(cfg, f"heads{h}_{act}")
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
