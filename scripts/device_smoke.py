"""The smoke profile's training steps on whatever device torch finds (a GPU if there is one), through the engine alone.

For a machine that has an accelerator but not the orchestration stack (no Prefect, DVC or MLflow installed): it checks
that `precision: auto` resolves sensibly there and that every objective trains and evaluates on that device.
Steps, with the smoke profile's budgets: teacher fine-tune, TinyBERT-style general distillation on the corpus,
TinyBERT-style task distillation (intermediate, then prediction from the teacher-logit cache), DistilBERT-style task
distillation, and a no-teacher baseline; then the same teacher fine-tune with `fp16` (gradient scaler) where CUDA is.

Usage: python scripts/device_smoke.py [--profile profiles/smoke.yaml] [--teacher DIR] [--rows 2000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, BertModel

from kdistill.config import load_params
from kdistill.data.batches import tokenize_task
from kdistill.data.corpus import pack_corpus
from kdistill.data.glue import get_task, load_split
from kdistill.distill.objectives import (
    Intermediate,
    Prediction,
    Supervised,
    teacher_logits,
)
from kdistill.models import (
    distilbert_student,
    every_other_layer,
    load_model,
    load_tokenizer,
    resolve_teacher,
    tinybert_config,
)
from kdistill.train.evaluation import optim_to_trainer_config, score
from kdistill.train.precision import cpu_capability, resolve_precision
from kdistill.train.trainer import Trainer, default_device, pad_collate

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "smoke.yaml"))
    ap.add_argument("--teacher", default=None, help="teacher directory (default: the profile's base.teacher)")
    ap.add_argument("--rows", type=int, default=None, help="train rows (default: the profile's max_train_examples)")
    ap.add_argument("--work", default="/tmp/kdistill-device-smoke")
    args = ap.parse_args()
    p = load_params(args.profile)
    device = default_device()
    prec = resolve_precision(p.base.precision, device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({cpu_capability()})"
    print(f"device {device} = {name}; base.precision {p.base.precision!r} resolves to {prec}", flush=True)
    teacher_src = args.teacher or resolve_teacher(p.base.teacher)
    tok = load_tokenizer(teacher_src)
    spec = get_task(p.base.task)
    data = str(ROOT / p.base.data_dir)
    rows = args.rows or p.base.max_train_examples
    train = load_split(data, p.base.task, "train").shuffle(seed=p.base.seed).select(range(rows))
    train = tokenize_task(train, tok, p.base.max_seq_len)
    dev = tokenize_task(load_split(data, p.base.task, "dev"), tok, p.base.max_seq_len)
    corpus = pack_corpus(ROOT / p.prepare.corpus, tok, p.prepare.corpus_seq_len, p.prepare.max_documents)
    corpus = corpus.remove_columns([c for c in corpus.column_names if c != "input_ids"])
    work = Path(args.work)
    results = {}

    def run(label, obj, ds, optim, precision=prec, **kw):
        cfg = optim_to_trainer_config(optim, p.base.seed, label, precision)
        t0 = time.time()
        res = Trainer(obj, ds, cfg, work / label.replace(" ", "_"), device=device, **kw).train(resume=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        last = res.history[-1]
        results[label] = {"steps": res.steps, "seconds": round(dt, 2), "precision": precision,
                          "final": {k: round(v, 4) for k, v in last.items() if k not in ("step", "lr")}}
        print(f"[{label}] {res.steps} steps in {dt:.1f}s ({precision}), last losses {results[label]['final']}", flush=True)
        return res

    torch.manual_seed(p.base.seed)
    teacher = load_model(AutoModelForSequenceClassification, teacher_src, num_labels=spec.num_labels, dtype=torch.float32)
    run("teacher fine-tune", Supervised(teacher), train, p.teacher_finetune.optim)
    teacher.to(device)
    t_metrics = score(teacher, dev, p.base.task, prec)
    print(f"[teacher fine-tune] dev {t_metrics}", flush=True)

    g = p.general_distill.tinybert
    torch.manual_seed(p.base.seed)
    s = g.student
    general = BertModel(tinybert_config(teacher.config, s.layers, s.hidden, s.heads, s.ffn, s.activation))
    base_teacher = teacher.bert
    run("general distill tinybert", Intermediate(general, base_teacher, g.weights, g.layer_map, g.attention,
                                                 g.shared_projection, g.mask_padding), corpus, g.optim)

    general.save_pretrained(work / "general")
    tok.save_pretrained(work / "general")

    def student_from_general():
        torch.manual_seed(p.base.seed)
        return load_model(AutoModelForSequenceClassification, work / "general", num_labels=spec.num_labels)

    t = p.task_distill.tinybert
    tiny = student_from_general()
    run("task distill tinybert (intermediate)",
        Intermediate(tiny, teacher, {k: v for k, v in t.weights.items() if k != "pred"}, g.layer_map, g.attention,
                     g.shared_projection, g.mask_padding), train, t.intermediate)
    cache = teacher_logits(teacher, train, pad_collate, precision=prec)
    run("task distill tinybert (prediction)", Prediction(tiny, teacher, {"pred": t.weights["pred"]}, t.temperature, "ce",
                                                         soft_name="pred", cached_logits=cache), train, t.prediction)
    d = p.task_distill.distilbert
    distil = distilbert_student(teacher, every_other_layer(teacher.config.num_hidden_layers))
    run("task distill distilbert", Prediction(distil, teacher, {"ce": d.alpha_soft, "hard": 1 - d.alpha_soft},
                                              d.temperature, d.soft_loss, d.t2_scaling, soft_name="ce",
                                              cached_logits=cache), train, d.optim)
    run("baseline tinybert", Supervised(student_from_general()), train, p.task_distill.baseline)
    for label, m in (("tinybert", tiny), ("distilbert", distil)):
        print(f"[{label}] dev {score(m.to(device), dev, p.base.task, prec)}", flush=True)
    if device.type == "cuda":  # the gradient-scaler path that `auto` takes on GPUs without bf16
        torch.manual_seed(p.base.seed)
        t16 = load_model(AutoModelForSequenceClassification, teacher_src, num_labels=spec.num_labels, dtype=torch.float32)
        run("teacher fine-tune fp16", Supervised(t16), train, p.teacher_finetune.optim, precision="fp16")
        print(f"[teacher fine-tune fp16] dev {score(t16.to(device), dev, p.base.task, 'fp16')}", flush=True)
    print("all steps finished on", device)


if __name__ == "__main__":
    main()
