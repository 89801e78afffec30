"""Subprocess for the progressive-transfer kill test: a tiny MobileBERT general distillation through the recipe."""

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from datasets import Dataset
from transformers import BertForMaskedLM

from kdistill.config import parse_params
from kdistill.recipes import mobilebert
from kdistill.recipes.base import GeneralContext
from kdistill.train.phases import run_phases
from tests.conftest import tiny_config
from tests.train_worker import Slow

PARAMS = {
    "general_distill": {"mobilebert": {
        "student": {"bottleneck": 8, "heads": 2, "ffn": 16, "stacked_ffn": 2, "embedding": 8},
        "progressive": {"steps_per_layer": 4, "batch_size": 4, "checkpoint_every": 1, "lr": 1e-3},
        "joint": {"optim": {"lr": 1e-3, "batch_size": 4, "max_steps": 4, "checkpoint_every": 1}},
    }},
    "base": {"precision": "fp32"},
}


def tiny_teacher(path: Path) -> Path:
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config(layers=3, hidden=32, heads=4)).save_pretrained(path)
    return path


def corpus() -> Dataset:
    g = torch.Generator().manual_seed(3)
    return Dataset.from_dict({"input_ids": [[2] + torch.randint(5, 30, (int(torch.randint(4, 10, (1,), generator=g)),),
                                                                  generator=g).tolist() + [3] for _ in range(24)]})


def plan(workdir: Path):
    teacher = workdir / "teacher" if (workdir / "teacher").is_dir() else tiny_teacher(workdir / "teacher")
    tok = SimpleNamespace(pad_token_id=0, cls_token_id=2, sep_token_id=3, mask_token_id=4)
    ctx = GeneralContext(parse_params(PARAMS), str(teacher), teacher, tok, lambda spec: "fp32")
    return mobilebert.general(ctx)


def main(workdir: str, delay: float) -> None:
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    p = plan(work)
    run_phases(p.phases, corpus(), work / "phases", p.student, callbacks=lambda phase, off: [Slow(delay)],
               device=torch.device("cpu"))
    torch.save(p.student.state_dict(), work / "final.pt")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
