"""Intermediate distillation side by side with TextBrewer 0.2.1's GeneralDistiller, in one process.

Both train the same 3 x 192 x 12-head student (one initialisation, copied) from the offline all-MiniLM-L6-v2 teacher
on the same real SST-2 batches (our length-grouped epoch order, given to TextBrewer as its dataloader) for two epochs,
with the same losses: embedding and hidden-state MSE through a learned linear projection (teacher layers 0, 2, 4, 6),
attention-probability MSE (teacher layers 2, 4, 6), padding masked, AdamW with linear warm-up and decay, gradient
clipping at 1.0. TextBrewer needs eager attention and output_attentions; ours captures the scores inside the attention
function and builds its teacher cache in the timed run (a fresh cache directory every round). The two tools run in
interleaved rounds, so the machine's noise hits them alike; the best round of each is reported.
`auto` runs both under the autocast that `precision: auto` picks here (TextBrewer has no CPU mixed precision of its
own, so its train loop runs inside the same autocast context).

Usage: make bench-textbrewer  (or .venv/bin/python benchmarks/bench_textbrewer.py [--rows 1024] [--rounds 3])
"""

import argparse
import copy
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertModel, get_linear_schedule_with_warmup

from kdistill.data.batches import tokenize_task
from kdistill.data.corpus import pack_corpus
from kdistill.data.glue import load_split
from kdistill.distill.objectives import Intermediate
from kdistill.distill.teacher_cache import features_for
from kdistill.models import load_model, load_tokenizer, resolve_teacher, tinybert_config
from kdistill.train.precision import (
    autocast,
    cpu_capability,
    resolve_precision,
    resolve_threads,
)
from kdistill.train.trainer import Trainer, TrainerConfig, epoch_batches, pad_collate

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=1024, help="SST-2 train rows (two epochs over them per run)")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--precisions", default="fp32,auto")
ap.add_argument("--data", choices=["sst2", "corpus"], default="sst2",
                help="sst2: task rows (TinyBERT's task stage 1); corpus: 64-token packed Wikipedia (its general stage)")
args = ap.parse_args()

try:
    import textbrewer
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
except ImportError:
    raise SystemExit("TextBrewer is not installed: run `make bench-textbrewer` (it installs requirements-bench.txt)")
logging.getLogger("Distillation").setLevel(logging.WARNING)

torch.set_num_threads(resolve_threads("auto"))
auto = resolve_precision("auto", "cpu")
LR, SEED, MAX_LEN = 5e-4, 42, 64
teacher_dir = resolve_teacher("offline:all-MiniLM-L6-v2")
tok = load_tokenizer(teacher_dir)
if args.data == "sst2":
    data = load_split(Path("data/glue"), "sst2", "train").shuffle(seed=0).select(range(args.rows))
    ds = tokenize_task(data, tok, MAX_LEN)
else:
    ds = pack_corpus("data/corpus/enwiki_sample.txt", tok, MAX_LEN).shuffle(seed=0).select(range(args.rows))
ds = ds.select_columns(["input_ids"]).add_column("row", list(range(len(ds))))
lengths = [len(x) for x in ds["input_ids"]]
steps = args.epochs * math.ceil(len(ds) / args.batch)
n_examples = args.epochs * len(ds)

teacher = load_model(BertModel, teacher_dir, attn_implementation="sdpa").eval()
torch.manual_seed(SEED)
student0 = BertModel(tinybert_config(teacher.config, 3, 192, 12, 768), add_pooling_layer=False)
LAYERS = [2, 4, 6]


split: list[str] = []


def ours(precision: str) -> float:
    student = copy.deepcopy(student0)
    student.set_attn_implementation("sdpa")
    work = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    cfg = TrainerConfig(lr=LR, batch_size=args.batch, epochs=float(args.epochs), warmup_ratio=0.1, precision=precision,
                        checkpoint_every=10**9, seed=SEED, desc=f"ours {precision}")
    t0 = time.perf_counter()
    obj = Intermediate(student, teacher, {"emb": 1.0, "hidn": 1.0, "attn": 1.0}, LAYERS, "probs")
    obj.teacher_features = features_for(obj, teacher, ds, pad_collate, cfg, work / "cache", budget_gb=4.0)
    built = time.perf_counter() - t0
    Trainer(obj, ds, cfg, work / "ckpt").train(resume=False)
    elapsed = time.perf_counter() - t0
    split.append(f"cache build {built:.1f} s + training {elapsed - built:.1f} s")
    shutil.rmtree(work, ignore_errors=True)
    return n_examples / elapsed


class EpochBatches:
    """Our epoch order, one list of batches per pass, as TextBrewer's dataloader."""

    def __init__(self):
        self.epoch = 0

    def __len__(self):
        return math.ceil(len(ds) / args.batch)

    def __iter__(self):
        for idx in epoch_batches(lengths, args.batch, SEED, self.epoch):
            rows = ds[idx]
            b = pad_collate([dict(zip(rows, vals)) for vals in zip(*rows.values())])
            yield {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        self.epoch += 1


def adaptor(batch, out):
    return {"hidden": out.hidden_states, "attention": out.attentions, "inputs_mask": batch["attention_mask"]}


def textbrewer_run(precision: str) -> float:
    student = copy.deepcopy(student0)
    student.set_attn_implementation("eager")  # TextBrewer reads attentions from output_attentions
    t_eager = copy.deepcopy(teacher)
    t_eager.set_attn_implementation("eager")
    work = Path(tempfile.mkdtemp(prefix="bench-tb-"))
    # the same objective as ours: emb + mean over mapped layers of hidden MSE + mean of attention MSE
    third = 1.0 / len(LAYERS)
    matches = [{"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0,
                "proj": ["linear", 192, 384]}]
    matches += [{"layer_T": t, "layer_S": s + 1, "feature": "hidden", "loss": "hidden_mse", "weight": third,
                 "proj": ["linear", 192, 384]} for s, t in enumerate(LAYERS)]
    matches += [{"layer_T": t - 1, "layer_S": s, "feature": "attention", "loss": "attention_mse", "weight": third}
                for s, t in enumerate(LAYERS)]
    t0 = time.perf_counter()
    train_cfg = TrainingConfig(device="cpu", log_dir=None, output_dir=str(work), ckpt_frequency=1)
    distill_cfg = DistillationConfig(intermediate_matches=matches, kd_loss_weight=0.0, hard_label_weight=0.0)
    distiller = GeneralDistiller(train_cfg, distill_cfg, t_eager, student, adaptor, adaptor)
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.01)  # TextBrewer adds its projections
    with autocast(precision, "cpu"), distiller:
        distiller.train(opt, EpochBatches(), num_epochs=args.epochs, scheduler_class=get_linear_schedule_with_warmup,
                        scheduler_args={"num_warmup_steps": int(0.1 * steps), "num_training_steps": steps},
                        max_grad_norm=1.0, output_hidden_states=True, output_attentions=True)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    return n_examples / elapsed


print(f"CPU capability {cpu_capability()}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
      f"TextBrewer {textbrewer.__version__}; precision auto = {auto}")
print(f"{len(ds)} {'SST-2' if args.data == 'sst2' else 'corpus'} rows (mean {sum(lengths) / len(lengths):.1f} tokens), {args.epochs} epochs, batch {args.batch}, "
      f"{args.rounds} interleaved rounds; examples/s = {n_examples} / wall time (teacher cache build included)")
precisions = {"fp32": "fp32", "auto": auto}
for name in args.precisions.split(","):
    prec = precisions[name]
    rates = {"ours": [], "textbrewer": []}
    for r in range(args.rounds):
        rates["ours"].append(ours(prec))
        rates["textbrewer"].append(textbrewer_run(prec))
        print(f"  {name} ({prec}) round {r + 1}: ours {rates['ours'][-1]:.1f} ({split[-1]}), "
              f"textbrewer {rates['textbrewer'][-1]:.1f} examples/s", flush=True)
    a, b = max(rates["ours"]), max(rates["textbrewer"])
    print(f"{name:5s} ({prec}): ours {a:7.1f} examples/s   TextBrewer {b:7.1f} examples/s   ratio {a / b:.2f}x")
