"""The report's speed columns hold while the machine is busy: every model is timed in turns, so a process hogging
the CPU slows the teacher and the students alike instead of whichever model happened to run beside it."""

import os
import subprocess
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification

from kdistill.deploy.speed import interleaved_profiles, model_profile
from tasks.evaluate import TIMING, compare, report_md


def _model(layers, hidden, heads, ffn, seed):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=3000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=128, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


def test_a_report_built_beside_a_busy_process_ranks_every_student_faster_than_the_teacher(tmp_path):
    models = {"teacher": _model(4, 256, 4, 1024, 0), "tinybert": _model(1, 64, 2, 128, 1),
              "distilbert": _model(2, 128, 2, 256, 2)}
    for n, m in models.items():
        m.save_pretrained(tmp_path / n)
    # one spinning process per core: whatever runs next to the timing, as a training stage would
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        timed = interleaved_profiles(models, batch_sizes=[1], seq_lens=[64], warmup=2, repeats=12)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    summary = {"task": "sst2", "metric": "accuracy", "threads": torch.get_num_threads(), "precision": "fp32",
               "device": "cpu", "cpu_capability": "test", "timing": TIMING.format(rounds=12), "models": {}}
    for n, m in models.items():
        summary["models"][n] = {"score": 0.9, "metrics": {"accuracy": 0.9}, **model_profile(m, tmp_path / n, [64]),
                                **timed[n]}
    ref = compare(summary, 64)
    assert ref == "bs1_seq64_p50"
    for n in ("tinybert", "distilbert"):
        assert summary["models"][n]["speedup"] > 1, (n, timed)
        assert summary["models"][n]["flops_ratio"] < 1
    report = report_md(summary, ref, [], tmp_path)
    assert "measured in turns" in report
    rows = {line.split("|")[1].strip(): line.split("|") for line in report.splitlines() if line.startswith("| ") and len(line.split("|")) == 11}
    assert float(rows["teacher"][8].strip().rstrip("x")) == 1.0
    assert all(float(rows[n][8].strip().rstrip("x")) > 1 for n in ("tinybert", "distilbert"))
