"""Precision and threads chosen for the machine: `auto` never picks a precision the hardware only emulates."""

import pytest
import torch
from datasets import Dataset

from kdistill.config import ParamsError, parse_params
from kdistill.distill.objectives import Supervised
from kdistill.train import precision as P
from kdistill.train.trainer import Trainer, TrainerConfig


@pytest.fixture
def probe():
    def use(answer: bool):
        P.set_bf16_probe(lambda device: answer)

    yield use
    P.set_bf16_probe(None)


def test_auto_is_fp32_without_native_bf16_and_bf16_with_it(probe):
    probe(False)
    assert P.resolve_precision("auto", "cpu") == "fp32"
    assert P.resolve_precision("auto", "cuda") == "fp16"  # a CUDA device without bf16: fp16 with loss scaling
    probe(True)
    assert P.resolve_precision("auto", "cpu") == "bf16"
    assert P.resolve_precision("auto", "cuda") == "bf16"
    # an explicit choice always wins over the probe
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    probe(False)
    assert P.resolve_precision("bf16", "cpu") == "bf16"


def test_the_real_probe_answers_and_is_reported(capsys):
    native = P.native_cpu_bf16()
    resolved = P.resolve_precision("auto", "cpu")
    print(f"CPU capability {P.cpu_capability()}, native bf16 {native}: auto -> {resolved}")
    assert resolved == ("bf16" if native else "fp32")
    flags = P._cpu_flags()
    if flags:  # Linux: the probe agrees with the CPU's own flags
        assert native == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_fp16_is_refused_on_cpu_and_unknown_precisions_are_refused():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="auto, fp32, bf16 or fp16"):
        P.resolve_precision("fp64", "cpu")


def test_precision_keys_are_validated_and_the_old_bf16_flag_points_to_precision():
    with pytest.raises(ParamsError, match=r"base\.precision"):
        parse_params({"base": {"precision": "half"}})
    with pytest.raises(ParamsError, match=r"unknown key 'teacher_finetune\.optim\.bf16'.*precision"):
        parse_params({"teacher_finetune": {"optim": {"bf16": True}}})
    p = parse_params({"base": {"precision": "fp32"}, "teacher_finetune": {"optim": {"precision": "bf16"}}})
    assert p.base.precision == "fp32" and p.teacher_finetune.optim.precision == "bf16"
    assert p.general_distill.tinybert.optim.precision is None  # inherits base.precision


def test_threads_auto_is_this_process_share_of_its_cpus(monkeypatch):
    monkeypatch.delenv("KDISTILL_THREADS", raising=False)
    assert P.resolve_threads("auto") == P.available_cpus() >= 1
    monkeypatch.setenv("KDISTILL_THREADS", "1")  # the flow's share when stages run side by side
    assert P.resolve_threads("auto") == 1
    assert P.resolve_threads(3) == 3  # an explicit number still wins
    with pytest.raises(ParamsError, match=r"base\.threads"):
        parse_params({"base": {"threads": 0}})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trainer_trains_in_the_resolved_precision(make_bert, tmp_path, precision):
    model = make_bert("seq", seed=0)
    ds = Dataset.from_dict({"input_ids": [[2, 5 + i % 7, 6, 3] for i in range(16)], "labels": [i % 2 for i in range(16)]})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = Trainer(Supervised(model), ds, TrainerConfig(batch_size=8, max_steps=2, precision=precision), tmp_path / "c",
                  device=torch.device("cpu")).train()
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())  # master weights


def test_trainer_refuses_an_unresolved_precision(make_bert, tmp_path):
    ds = Dataset.from_dict({"input_ids": [[2, 5, 3]] * 4, "labels": [0, 1, 0, 1]})
    with pytest.raises(ValueError, match="must be resolved"):
        Trainer(Supervised(make_bert("seq")), ds, TrainerConfig(precision="auto"), tmp_path / "c",
                device=torch.device("cpu")).train()
