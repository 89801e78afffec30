"""Named-entity recognition end to end: the shipped WNUT-17 CoNLL files (a few rows) through the flow (Prefect, DVC,
MLflow): tags read and their scheme stated, every recipe and control distilled per token, entity F1 scored by
seqeval, ONNX exported with parity, registered, and served as entities with character offsets. The profile extends
params.yaml (here the smoke settings), so its general students are the default pipeline's, computed once; it names two
recipes (base.recipes), so the flow runs only their stages (tests/test_families.py distils every recipe per token)."""

import json
import subprocess

import mlflow
import pytest
import torch
import yaml

from kdistill.config import load_params
from kdistill.data.task import load_task
from kdistill.train.precision import autocast
from scripts.registered_score import pyfunc_score

from .conftest import copy_project, run_flow, tiny_offline_shaped_teacher
from .serving import invoke, served

TEXT = "Ann Smith moved to New York with Google ."
RECIPES = ("tinybert", "minilm")  # base.recipes of the profile


@pytest.fixture(scope="module")
def ner_project(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("ner") / "proj")
    # the first 60 dev sentences: every model is scored and parity-checked on them
    dev = (project / "data" / "ner" / "wnut17" / "dev.conll").read_text().split("\n\n")[:60]  # blank lines
    (project / "data" / "ner" / "dev-60.conll").write_text("\n\n".join(dev) + "\n")
    # params.yaml made tiny (the smoke settings, a tiny teacher with the offline one's tokenizer): the profile extends
    # it with the same teacher, corpus and general params, so the flow runs the default pipeline's teacher_mlm and
    # general stages, and this profile reads them
    smoke = load_params(project / "profiles" / "smoke.yaml").model_dump(mode="json")  # DVC reads every key there
    smoke["base"]["teacher"] = str(tiny_offline_shaped_teacher(project / "teachers" / "tiny").relative_to(project))
    (project / "params.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    profile = {"extends": "../params.yaml",
               "base": {"task": "wnut17", "max_train_examples": 64, "validation_rows": 32, "recipes": list(RECIPES)},
               "data": {"kind": "token_classification", "train": "data/ner/wnut17/train.conll",
                        "dev": "data/ner/dev-60.conll"},
               "augment": {"method": "none"},
               "tracking": {"experiment_prefix": "kdistill-ner-test", "registry_prefix": "nertest-"}}
    (project / "profiles" / "nertest.yaml").write_text(yaml.safe_dump(profile))
    return project, run_flow(project, "--profile", "nertest")


@pytest.mark.slow
def test_conll_tags_run_through_every_stage_and_are_served_as_entities(ner_project):
    from datasets import load_from_disk
    from seqeval.metrics import f1_score
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    project, proc = ner_project
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = project / "outputs-nertest"
    # the general students are the default pipeline's: its stages ran here (those of the profile's two recipes only:
    # prepare, teacher_mlm and two general stages), recorded in its dvc.lock, so its own run would skip them; this
    # profile has none of its own and its students start from them
    general = [f"general_distill@{r}" for r in RECIPES]
    assert "of which 4 are the default pipeline's" in proc.stdout + proc.stderr
    assert not (out / "general").exists() and not (out / "teacher_mlm").exists()
    assert sorted(d.name for d in (project / "outputs" / "general").iterdir()) == sorted(RECIPES)
    assert all((project / "outputs" / "general" / r / "model.safetensors").is_file() for r in RECIPES)
    assert set(general) <= set(yaml.safe_load((project / "dvc.lock").read_text())["stages"])
    assert not any(s.startswith("general") for s in yaml.safe_load((project / "runs" / "nertest" / "dvc.lock")
                                                                 .read_text())["stages"])
    status = subprocess.run([".venv/bin/dvc", "status", "--json", "teacher_mlm", *general], cwd=project,
                            capture_output=True, text=True, check=True)
    assert json.loads(status.stdout or "{}") == {}
    for model in ("students", "baselines"):
        started = json.loads((out / model / "tinybert" / "kdistill.json").read_text())
        assert started["general_student"] == "outputs/general/tinybert"
    task = json.loads((out / "data" / "task.json").read_text())
    assert task["kind"] == "token_classification" and task["scheme"] == "IOB2" and len(task["labels"]) == 13
    assert "IOB2 scheme (detected in train), 13 tags" in proc.stdout
    stats = json.loads((out / "data" / "stats.json").read_text())
    assert stats["label_counts"]["train"]["entities person"] == 660
    dev = load_from_disk(str(out / "data" / "dev"))
    assert len(dev) == 60
    # the teacher's reported entity F1 is seqeval's on its own predictions, read word by word here
    summary = json.loads((out / "reports" / "summary.json").read_text())
    tok = AutoTokenizer.from_pretrained(out / "teacher")
    model = AutoModelForTokenClassification.from_pretrained(out / "teacher").eval()
    # at the precision evaluate ran in (bf16 where the CPU has it) and in one padded batch, as evaluate batched these
    # 60 rows: a near-random tiny teacher has near-tied logits, which another precision or batch shape can flip
    enc = tok(list(dev["words"]), is_split_into_words=True, truncation=True, max_length=32, padding=True,
              return_tensors="pt")
    with torch.no_grad(), autocast(summary["precision"]):
        ids = model(**enc).logits.float().argmax(-1).tolist()
    gold, pred = [], []
    for i, (words, tags) in enumerate(zip(dev["words"], dev["tags"])):
        first = {}
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and w not in first:
                first[w] = pos
        gold.append([task["labels"][t] for t in tags])
        pred.append([task["labels"][ids[i][first[w]]] if w in first else "O" for w in range(len(words))])
    assert summary["models"]["teacher"]["score"] == pytest.approx(f1_score(gold, pred), abs=1e-9)
    assert summary["metric"] == "entity_f1" and "f1_person" in summary["models"]["teacher"]["metrics"]
    deploy = json.loads((out / "reports" / "deploy.json").read_text())
    for r in RECIPES:
        assert json.loads((out / "students" / r / "config.json").read_text())["architectures"][0].endswith(
            "ForTokenClassification")
        assert deploy["models"][r]["onnx-fp32"]["labels_differing"] == 0  # parity, sub-token by sub-token
        assert "baseline-" + r in summary["models"]
    assert set(deploy["models"]) == {"teacher", *RECIPES} and len(summary["models"]) == 1 + 2 * len(RECIPES)
    assert "pipeline_tag: token-classification" in (out / "students" / "minilm" / "README.md").read_text()
    # the registered student, loaded as a user would, and served over HTTP: entities with character offsets
    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    got = mlflow.pyfunc.load_model("models:/nertest-wnut17-minilm@champion").predict([TEXT, "", "no entity here"])
    assert list(got.columns) == ["entities"] and len(got) == 3
    types = {t[2:] for t in task["labels"] if t != "O"}
    for e in got["entities"][0]:
        assert TEXT[e["start"]: e["end"]] == e["text"] and e["label"] in types and 0 <= e["score"] <= 1
    assert list(got["entities"][1]) == []
    # the registered model's entity F1 on the dev sentences (sent as text, the words joined by spaces) is the one the
    # export stage measured for the variant it serves
    champion = mlflow.MlflowClient().get_model_version_by_alias("nertest-wnut17-minilm", "champion")
    served_model = mlflow.pyfunc.load_model("models:/nertest-wnut17-minilm@champion")
    stated = deploy["models"]["minilm"][champion.tags["variant"]]["metrics"]["entity_f1"]
    assert pyfunc_score(served_model, dev, load_task(out / "data")) == pytest.approx(stated, abs=0.005)
    with served("nertest-wnut17-minilm", uri, cwd=project) as (server, url):
        answers = invoke(url, [TEXT])
        assert len(answers) == 1 and set(answers[0]) == {"entities"}
        for e in answers[0]["entities"]:
            assert TEXT[e["start"]: e["end"]] == e["text"] and set(e) == {"text", "label", "start", "end", "score"}
    assert server.returncode == 0
