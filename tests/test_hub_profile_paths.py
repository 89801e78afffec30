"""The hub profile's code paths (a teacher with its own MLM head, explicit DistilBERT layers, TinyBERT-4 shape
on a 12-layer teacher), exercised on a tiny local model directory of the same format."""

import json
import os
import sys

import pytest
import torch
import yaml
from transformers import BertForMaskedLM, BertModel, MobileBertForMaskedLM

from kdistill.config import load_params
from kdistill.distill.layer_map import resolve_layer_map
from pipelines import stage_zygote
from pipelines.stage_exec import run_command

from .conftest import ROOT, tiny_config


def test_hub_profile_is_valid_and_maps_12_to_4():
    p = load_params(ROOT / "profiles" / "hub-bert-base.yaml")
    s = p.general_distill.tinybert.student
    assert (s.layers, s.hidden, s.heads, s.ffn) == (4, 312, 12, 1200)
    assert resolve_layer_map(p.general_distill.tinybert.layer_map, 4, 12) == [3, 6, 9, 12]
    assert p.general_distill.distilbert.init_layers == [0, 2, 4, 7, 9, 11]
    # the published general students: TinyBERT-4 (Jiao et al.) and MiniLM-L6 (Wang et al.), distilled from BERT-base
    assert p.general_distill.tinybert.from_ == "huawei-noah/TinyBERT_General_4L_312D"
    assert p.general_distill.minilm.from_ == "nreimers/MiniLM-L6-H384-uncased"


@pytest.mark.slow
def test_teacher_with_own_mlm_head_is_used_not_refitted(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    teacher = BertForMaskedLM(tiny_config(layers=12, hidden=24, heads=4, vocab=len(tiny_tokenizer)))
    tdir = tmp_path / "teacher"
    teacher.save_pretrained(tdir)
    tiny_tokenizer.save_pretrained(tdir)
    smoke = yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())
    smoke["base"]["teacher"] = str(tdir)
    smoke["general_distill"]["tinybert"]["student"] = {"layers": 4, "hidden": 16, "heads": 4, "ffn": 32}
    smoke["general_distill"]["distilbert"]["init_layers"] = [0, 2, 4, 7, 9, 11]
    smoke["general_distill"]["mobilebert"]["student"] = {"bottleneck": 8, "heads": 2, "ffn": 16, "embedding": 16}
    # a published general student, here a tiny saved one: general distillation skipped, its own shape kept
    published = BertModel(tiny_config(layers=2, hidden=16, heads=4, ffn=32, vocab=len(tiny_tokenizer)))
    published.save_pretrained(tmp_path / "published")
    smoke["general_distill"]["minilm"]["from"] = str(tmp_path / "published")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(smoke))
    out = tmp_path / "outputs"
    env = {**os.environ, "KDISTILL_PARAMS": str(params), "KDISTILL_OUTPUTS": str(out), "HF_HUB_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "MLFLOW_DISABLE_TELEMETRY": "true"}
    # the six stage commands run as the flow runs them: forked from one stage server (one import of the libraries);
    # a failing one raises StageFailed with its own error
    with stage_zygote.serving(env):
        for args in (["prepare"], ["teacher_mlm"], ["general_distill", "distilbert"], ["general_distill", "tinybert"],
                     ["general_distill", "mobilebert"], ["general_distill", "minilm"]):
            run_command("-".join(args), " ".join([sys.executable, "-m", f"tasks.{args[0]}", *args[1:]]), ROOT, env,
                        tmp_path / "logs" / f"{'-'.join(args)}.log")
    head = json.loads((out / "teacher_mlm" / "kdistill.json").read_text())
    assert head["head"] == "pre-trained"
    saved = BertForMaskedLM.from_pretrained(out / "teacher_mlm")
    assert torch.equal(saved.cls.predictions.transform.dense.weight, teacher.cls.predictions.transform.dense.weight)
    student = BertForMaskedLM.from_pretrained(out / "general" / "distilbert")
    assert student.config.num_hidden_layers == 6
    tiny = json.loads((out / "general" / "tinybert" / "kdistill.json").read_text())
    assert tiny["layer_map"] == [3, 6, 9, 12]
    mobile = json.loads((out / "general" / "mobilebert" / "kdistill.json").read_text())
    assert mobile["progression"] == [f"layer{i}" for i in range(1, 13)] + ["joint"]  # the teacher's depth, block by block
    assert MobileBertForMaskedLM.from_pretrained(out / "general" / "mobilebert").config.hidden_size == 24
    started = BertModel.from_pretrained(out / "general" / "minilm")
    assert json.loads((out / "general" / "minilm" / "kdistill.json").read_text())["steps"] == 0
    for k, v in published.state_dict().items():
        assert torch.equal(started.state_dict()[k], v), k
    assert (out / "general" / "minilm" / "tokenizer_config.json").is_file()  # the teacher's tokenizer beside it
