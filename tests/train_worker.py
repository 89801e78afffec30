"""Subprocess for the kill-and-resume test: trains a tiny TinyBERT-style objective, saves the final weights."""

import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import BertModel

from kdistill.distill.objectives import Intermediate
from kdistill.train.trainer import Trainer, TrainerConfig
from tests.conftest import tiny_config


class Slow:
    def __init__(self, delay):
        self.delay = delay

    def on_step(self, step, components, total, lr):
        time.sleep(self.delay)

    def on_eval(self, step, metrics):
        pass


def main(workdir: str, delay: float) -> None:
    torch.manual_seed(0)
    teacher = BertModel(tiny_config(layers=4, hidden=32, heads=4)).eval()
    torch.manual_seed(1)
    student = BertModel(tiny_config(layers=2, hidden=16, heads=4, hidden_dropout_prob=0.2))
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(5, 30, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(40)]
    ds = Dataset.from_dict({"input_ids": rows})
    obj = Intermediate(student, teacher, {"emb": 1.0, "hidn": 1.0, "attn": 1.0})
    cfg = TrainerConfig(lr=1e-3, batch_size=4, grad_accum=2, epochs=3, checkpoint_every=2, seed=5, desc="worker")
    Trainer(obj, ds, cfg, Path(workdir) / "ckpt", callbacks=[Slow(delay)], device=torch.device("cpu")).train()
    torch.save(obj.state_dict(), Path(workdir) / "final.pt")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
