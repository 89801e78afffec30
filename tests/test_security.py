"""Safe defaults: weights from safetensors only (pickle is opt-in), never code shipped with a model."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification

from kdistill.config import load_params
from kdistill.models import ModelSpecError, check_model_dir, load_model

from .conftest import ROOT


def _pickle_only(make_bert, path):
    model = make_bert("seq")
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return model


def _params_with_teacher(tmp_path, teacher, **base):
    params = yaml.safe_load((ROOT / "runs" / "smoke" / "params.yaml").read_text())
    params["base"].update(teacher=str(teacher), **base)
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    return f


def test_a_teacher_with_only_pickle_weights_is_refused_before_any_work(make_bert, tmp_path):
    teacher = tmp_path / "teacher"
    _pickle_only(make_bert, teacher)
    env = {**os.environ, "KDISTILL_PARAMS": str(_params_with_teacher(tmp_path, teacher)),
           "KDISTILL_OUTPUTS": str(tmp_path / "out"), "HF_HUB_OFFLINE": "1"}
    env.pop("KDISTILL_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "tasks.teacher_finetune"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()
    assert len(last) == 1 and "pytorch_model.bin" in last[0] and "base.allow_pickle_weights" in last[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_pickle_weights_load_only_when_the_user_opts_in(make_bert, tmp_path):
    teacher = tmp_path / "teacher"
    model = _pickle_only(make_bert, teacher)
    with pytest.raises(ModelSpecError, match="pickle form"):
        load_model(AutoModelForSequenceClassification, teacher)
    loaded = load_model(AutoModelForSequenceClassification, teacher, allow_pickle=True)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    opted = load_params(_params_with_teacher(tmp_path, teacher, allow_pickle_weights=True))
    assert opted.base.allow_pickle_weights and not load_params(ROOT / "params.yaml").base.allow_pickle_weights


def test_code_shipped_with_a_model_is_never_run(make_bert, tmp_path):
    teacher = tmp_path / "teacher"
    make_bert("seq").save_pretrained(teacher)
    marker = tmp_path / "code-ran"
    (teacher / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                     "from transformers import BertForSequenceClassification as EvilModel\n")
    cfg = json.loads((teacher / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "evil.EvilModel"}
    (teacher / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelSpecError, match="trust_remote_code"):
        check_model_dir(teacher)
    with pytest.raises(ModelSpecError, match="auto_map"):
        load_model(AutoModelForSequenceClassification, teacher)
    assert not marker.exists()


def test_no_code_path_enables_remote_code_or_unpickles_model_weights():
    offenders = []
    for f in [*ROOT.glob("kdistill/**/*.py"), *ROOT.glob("tasks/*.py"), *ROOT.glob("pipelines/*.py"),
              *ROOT.glob("scripts/*.py")]:
        text = f.read_text()
        if re.search(r"trust_remote_code\s*=\s*True", text):
            offenders.append(f"{f.relative_to(ROOT)}: trust_remote_code=True")
        for line in text.splitlines():  # models load through kdistill.models.load_model (safetensors only)
            if re.search(r"(ForSequenceClassification|ForMaskedLM|AutoModel|BertModel)\.from_pretrained\(", line) \
                    and f.name != "model_card.py":  # the card shows users how to load a student
                offenders.append(f"{f.relative_to(ROOT)}: {line.strip()}")
    assert offenders == []
