"""Extractive QA end to end: the shipped SQuAD v1.1 subset (a few questions) through the flow (Prefect, DVC, MLflow):
contexts cut into windows, every recipe and control distilled on start/end distributions, exact match and F1 scored
over each question's windows, ONNX exported with parity, registered, and served as answers with character offsets.
The profile names two recipes (base.recipes); tests/test_families.py distils every recipe on QA windows."""

import json

import mlflow
import pytest
import torch
import yaml

from kdistill.train.precision import autocast

from .conftest import copy_project, run_flow, tiny_offline_shaped_teacher
from .serving import post, served

RECIPES = ("mobilebert", "minilm")  # base.recipes of the profile: MobileBERT's own architecture, a BERT-shaped one
CONTEXT = "The Eiffel Tower was built by Gustave Eiffel's company in Paris between 1887 and 1889."


@pytest.fixture(scope="module")
def qa_project(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("qa") / "proj")
    # 62 dev questions on 8 paragraphs: every model is scored and parity-checked on their windows
    dev = json.loads((project / "data" / "squad" / "dev.json").read_text())
    dev["data"] = [{**dev["data"][0], "paragraphs": dev["data"][0]["paragraphs"][:8]}]
    (project / "data" / "squad" / "dev-8.json").write_text(json.dumps(dev))
    profile = {"extends": "smoke.yaml",
               "base": {"task": "squad11", "max_seq_len": 64, "max_train_examples": 64, "validation_rows": 32,
                        "teacher": "teachers/tiny", "recipes": list(RECIPES)},
               "data": {"kind": "extractive_qa", "train": "data/squad/train.json", "dev": "data/squad/dev-8.json",
                        "doc_stride": 16},
               "augment": {"method": "none"},
               "evaluate": {"seq_lens": [64]}, "export": {"seq_lens": [64]},
               "tracking": {"experiment_prefix": "kdistill-qa-test", "registry_prefix": "qatest-"}}
    tiny_offline_shaped_teacher(project / "teachers" / "tiny")  # the offline teacher's tokenizer, a tiny encoder
    (project / "profiles" / "qatest.yaml").write_text(yaml.safe_dump(profile))
    return project, run_flow(project, "--profile", "qatest")


@pytest.mark.slow
def test_squad_questions_run_through_every_stage_and_are_served_as_answers(qa_project):
    import numpy as np
    from datasets import load_from_disk
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from kdistill.data.answers import best_span, squad_metrics

    project, proc = qa_project
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = project / "outputs-qatest"
    task = json.loads((out / "data" / "task.json").read_text())
    assert task["kind"] == "extractive_qa" and task["doc_stride"] == 16 and task["metric"] == "f1"
    stats = json.loads((out / "data" / "stats.json").read_text())
    assert stats["label_counts"]["train"]["questions"] == 3012 and stats["label_counts"]["dev"]["questions"] == 62
    # the teacher's reported F1, recomputed here question by question with the tokenizer's own windowing
    summary = json.loads((out / "reports" / "summary.json").read_text())
    dev = load_from_disk(str(out / "data" / "dev"))
    tok = AutoTokenizer.from_pretrained(out / "teacher")
    model = AutoModelForQuestionAnswering.from_pretrained(out / "teacher").eval()
    pred = []
    for q, c in zip(dev["question"], dev["context"]):
        enc = tok(q, c, truncation="only_second", max_length=64, stride=16, return_overflowing_tokens=True,
                  return_offsets_mapping=True, padding=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping").tolist()
        enc.pop("overflow_to_sample_mapping")
        with torch.no_grad(), autocast(summary["precision"]):  # evaluate's precision (bf16 where the CPU has it)
            o = model(**enc)
        best = None
        for w in range(len(offsets)):
            offs = [o if s == 1 else [-1, -1] for o, s in zip(offsets[w], enc.sequence_ids(w))]
            span = best_span(o.start_logits[w].float().numpy(), o.end_logits[w].float().numpy(), offs, 30)
            if span and (best is None or span[0] > best[0]):
                best = span
        pred.append(c[best[1]: best[2]] if best else "")
    want = squad_metrics(pred, [list(a) for a in dev["answer_texts"]])
    assert summary["models"]["teacher"]["score"] == pytest.approx(want["f1"], abs=1e-6)
    assert summary["metric"] == "f1" and "exact_match" in summary["models"]["teacher"]["metrics"]
    deploy = json.loads((out / "reports" / "deploy.json").read_text())
    for r in RECIPES:
        assert json.loads((out / "students" / r / "config.json").read_text())["architectures"][0].endswith(
            "ForQuestionAnswering")
        assert deploy["models"][r]["onnx-fp32"]["labels_differing"] == 0  # each window's argmax start and end
        assert "baseline-" + r in summary["models"]
    assert set(deploy["models"]) == {"teacher", *RECIPES} and len(summary["models"]) == 1 + 2 * len(RECIPES)
    assert sorted(d.name for d in (out / "general").iterdir()) == sorted(RECIPES)
    assert "pipeline_tag: question-answering" in (out / "students" / "minilm" / "README.md").read_text()
    # the registered student, loaded as a user would, and served over HTTP: answers with character offsets
    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    served_model = mlflow.pyfunc.load_model("models:/qatest-squad11-minilm@champion")
    got = served_model.predict({"question": ["Who built the tower?", "Where is it?"], "context": [CONTEXT, CONTEXT]})
    assert list(got.columns) == ["answer", "start", "end", "score"] and len(got) == 2
    for _, a in got.iterrows():
        assert CONTEXT[a["start"]: a["end"]] == a["answer"] and 0 <= a["score"] <= 1
    # the registered model's F1 on the dev questions is the one the report states for the variant it serves
    answers = served_model.predict({"question": list(dev["question"]), "context": list(dev["context"])})
    f1 = squad_metrics(list(answers["answer"]), [list(a) for a in dev["answer_texts"]])["f1"]
    variant = mlflow.MlflowClient().get_model_version_by_alias("qatest-squad11-minilm", "champion").tags["variant"]
    # the same windows, one per call as export scored them: the same F1, int8 included (dynamic quantization scales
    # by what a call holds)
    assert f1 == pytest.approx(deploy["models"]["minilm"][variant]["metrics"]["f1"], abs=1e-9), variant
    with served("qatest-squad11-minilm", uri, cwd=project) as (server, url):
        body = json.dumps({"inputs": {"question": "Who built the tower?", "context": CONTEXT}}).encode()
        status, text = post(url, body)
        assert status == 200, text
        answers = json.loads(text)["predictions"]
        assert len(answers) == 1 and set(answers[0]) == {"answer", "start", "end", "score"}
        assert CONTEXT[answers[0]["start"]: answers[0]["end"]] == answers[0]["answer"]
        status, text = post(url, json.dumps({"inputs": ["no question here"]}).encode())
        assert status == 400 and "question" in json.loads(text)["message"]
        long = {"inputs": {"question": "who " * 60 + "?", "context": CONTEXT}}  # no room for context in 64 tokens
        status, text = post(url, json.dumps(long).encode())
        assert status == 400 and "too long" in json.loads(text)["message"]
    assert server.returncode == 0
    assert np.isfinite(summary["models"]["minilm"]["score"])
