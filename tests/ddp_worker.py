"""Subprocess for the data-parallel tests: run as plain Python (one process) or under torchrun (N processes).

Prediction-layer distillation of a tiny student from a tiny teacher, with cached teacher logits (computed in shards
under torchrun), gradient accumulation, a short last batch (41 rows, batches of 8: under 2 processes one rank has
no row of it) and dev-set selection of the best state. Dropout is 0: dropout masks come from each process's own
random stream, so with it the two runs could not be compared. Rank 0 saves the final student weights.
"""

import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import BertForSequenceClassification

from kdistill.distill.objectives import Prediction, teacher_logits
from kdistill.train import distributed
from kdistill.train.trainer import Trainer, TrainerConfig, pad_collate
from tests.conftest import tiny_config
from tests.train_worker import Slow


def _rows(n: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(5, 30, (int(torch.randint(4, 14, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    return Dataset.from_dict({"input_ids": rows, "labels": [int(r[0] > 17) for r in rows], "row": list(range(n))})


def main(workdir: str, delay: float) -> None:
    w = distributed.init_from_env()
    torch.set_num_threads(1)
    work = Path(workdir)
    nodrop = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "num_labels": 2}
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_config(layers=3, hidden=32, heads=4, **nodrop)).eval()
    torch.manual_seed(1)
    student = BertForSequenceClassification(tiny_config(layers=2, hidden=16, heads=4, **nodrop))
    train, dev = _rows(41, 3), _rows(16, 4)
    logits = teacher_logits(teacher, train, pad_collate, batch_size=8, cache_dir=work / "logits")
    obj = Prediction(student, None, {"pred": 1.0, "hard": 0.5}, temperature=2.0, cached_logits=logits)

    def dev_score(o):  # negative dev loss: a smooth selection metric
        with torch.no_grad():
            b = pad_collate([dict(zip(dev.column_names, v)) for v in zip(*dev[:].values())])
            out = o.student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            return {"neg_loss": -float(torch.nn.functional.cross_entropy(out, b["labels"]))}

    cfg = TrainerConfig(lr=2e-3, batch_size=8, grad_accum=2, epochs=4, eval_every=3, checkpoint_every=2, seed=7,
                        desc=f"ddp worker ({w.size} processes)")
    res = Trainer(obj, train, cfg, work / "ckpt", eval_fn=dev_score, select_metric="neg_loss",
                  callbacks=[Slow(delay)], device=torch.device("cpu")).train()
    if w.main:
        torch.save({"student": student.state_dict(), "logits": logits, "best_step": res.best_step,
                    "resumed_from": res.resumed_from, "world": w.size,
                    "history": [h["loss"] for h in res.history]}, work / "final.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
