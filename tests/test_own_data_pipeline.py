"""End to end on a user's own problem: a CSV with a `review` column and three string labels, and a local DeBERTa-v2
teacher already fine-tuned for those labels, through Prefect, DVC and MLflow: the teacher is used as it is (zero
steps); the TinyBERT-style student learns from it token by token, while the MiniLM-style one is a BERT-family
student with a vocabulary of its own (`general_distill.minilm.from`) that learns from its soft labels
(cross-vocabulary); both are registered with the label names, exported with parity, and answer with the names. The
profile names those two recipes (`base.recipes`): the DistilBERT-style student's `from` is left unread, and
tests/test_families.py distils every recipe from a DeBERTa-v2 teacher.

The run tracks to a shared MLflow (`make mlflow-server`: PostgreSQL store, artifacts over HTTP) through
`tracking.mlflow_uri`: every loss component, registration and alias goes over HTTP. Where PostgreSQL cannot be had
(no root), it tracks to its SQLite file and the PostgreSQL test is skipped. One pipeline run serves both: the suite
has a time budget."""

import json
import random

import mlflow
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kdistill.data.batches import pad_collate, tokenize_task
from kdistill.data.task import Task
from kdistill.train.evaluation import score

from .conftest import copy_project, run_flow
from .families import save_teacher
from .listening import listening_addresses
from .mlflow_pg import mlflow_server, postgres_possible, psql
from .serving import invoke, served

LABELS = ("negative", "neutral", "positive")
WORDS = {"negative": ["bad", "awful", "boring", "dull", "worst"], "neutral": ["it", "a", "film", "story", "scene"],
         "positive": ["good", "great", "fun", "best", "love"]}


def reviews(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = rng.sample(WORDS[label], 3) + rng.sample(WORDS["neutral"], 2)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path, rows):
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "sentiment"])
        w.writerows(rows)


RECIPES = ("tinybert", "minilm")  # base.recipes of the profile: a DeBERTa-family student and a cross-vocabulary one
CROSS_VOCAB = ("minilm",)  # the recipe given a BERT student with its own vocabulary


def bert_with_own_vocabulary(out) -> None:
    """A tiny BERT encoder with a WordPiece vocabulary of its own: other ids, another size, and whole words the
    teacher's lacks (so the same text becomes other tokens)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for ws in WORDS.values() for w in ws} | {"awful", "movie", "plot", "great", "boring"})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "##s", *reversed(words)])}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=32, max_position_embeddings=80)).save_pretrained(out)
    tok.save_pretrained(out)


def fine_tuned_teacher(out, rows, family: str = "deberta-v2") -> None:
    """A tiny classifier of `family` fine-tuned (a plain loop, a few seconds) to tell the three labels apart."""
    from datasets import Dataset

    task = Task("reviews", "single_label", LABELS, "accuracy", False, ("accuracy",))
    model, tok = save_teacher(family, out, "seq", layers=2, hidden=32, heads=4, ffn=64)
    model = AutoModelForSequenceClassification.from_pretrained(out, ignore_mismatched_sizes=True, **task.model_config())
    ds = tokenize_task(Dataset.from_dict({"sentence1": [t for t, _ in rows], "label": [LABELS.index(x) for _, x in rows]}),
                       tok, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(0)
    for _ in range(8):
        for idx in torch.randperm(len(ds)).split(16):
            b = pad_collate([ds[i] for i in idx.tolist()], tok.pad_token_id)
            loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """(url, PostgreSQL port, database, run dir) of the shared MLflow the run tracks to; None without PostgreSQL."""
    if not postgres_possible():
        yield None
        return
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def own_project(tmp_path_factory, tracking_server):
    """(project, the flow's process, its tracking URI)."""
    project = copy_project(tmp_path_factory.mktemp("own") / "proj")
    uri = tracking_server[0] if tracking_server else f"sqlite:///{project / 'mlflow.db'}"
    train, dev = reviews(240, 0), reviews(45, 1)
    write_csv(project / "data" / "reviews" / "train.csv", train)
    write_csv(project / "data" / "reviews" / "dev.csv", dev)
    fine_tuned_teacher(project / "teachers" / "reviews-deberta", train)
    # a small BERT student someone distilled elsewhere, with its own WordPiece vocabulary (the teacher's differs)
    bert_with_own_vocabulary(project / "students-from" / "bert-mini")
    smoke = yaml.safe_load((project / "profiles" / "smoke.yaml").read_text())
    profile = {**smoke,
               "base": {**smoke["base"], "task": "reviews", "teacher": "teachers/reviews-deberta", "validation_rows": 30,
                        "max_train_examples": 120, "recipes": list(RECIPES)},
               "data": {"train": "data/reviews/train.csv", "dev": "data/reviews/dev.csv", "text": "review",
                        "label": "sentiment"},
               "augment": {"method": "none"},
               "general_distill": {
                   "tinybert": {"student": {"layers": 2, "hidden": 16, "heads": 4, "ffn": 32},
                                "optim": {"batch_size": 8, "max_steps": 3}},
                   "distilbert": {"from": "students-from/bert-mini"},
                   "mobilebert": {"student": {"bottleneck": 8, "heads": 2, "ffn": 16, "stacked_ffn": 1, "embedding": 8},
                                  "progressive": {"steps_per_layer": 1, "batch_size": 8},
                                  "joint": {"optim": {"batch_size": 8, "max_steps": 2}}},
                   "minilm": {"from": "students-from/bert-mini"}},
               # the TinyBERT-style shape also fine-tuned from the teacher's own weights, without distillation
               "task_distill": {**smoke["task_distill"], "teacher_init_controls": ["tinybert"]},
               "tracking": {"experiment_prefix": "kdistill-own", "registry_prefix": "own-",
                            **({"mlflow_uri": uri} if tracking_server else {})}}
    (project / "profiles" / "reviews.yaml").write_text(yaml.safe_dump(profile))
    proc = run_flow(project, "--profile", "reviews")
    return project, proc, uri


@pytest.mark.slow
def test_a_csv_with_string_labels_and_a_fine_tuned_deberta_teacher_run_end_to_end(own_project):
    project, proc, uri = own_project
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error" in line.lower()]
    assert proc.returncode == 0, "\n".join(errors[-20:]) or (proc.stdout + proc.stderr)[-4000:]
    out = project / "outputs-reviews"
    assert json.loads((out / "data" / "task.json").read_text())["labels"] == list(LABELS)
    # the teacher already named the labels: used as it is, zero training steps
    info = json.loads((out / "teacher" / "kdistill.json").read_text())
    assert info["mode"] == "use" and info["steps"] == 0
    assert "used as it is (0 training steps" in proc.stdout
    # its reported dev score is what an independent evaluation of the same directory gives
    src = project / "teachers" / "reviews-deberta"
    tok = AutoTokenizer.from_pretrained(src)
    from datasets import load_from_disk

    dev = tokenize_task(load_from_disk(str(out / "data" / "dev")), tok, 32)
    task = Task("reviews", "single_label", LABELS, "accuracy", False, ("accuracy", "macro_f1"))
    independent = score(AutoModelForSequenceClassification.from_pretrained(src), dev, task)
    summary = json.loads((project / "outputs-reviews" / "reports" / "summary.json").read_text())
    assert summary["models"]["teacher"]["score"] == pytest.approx(independent["accuracy"], abs=1e-9)
    assert set(summary["models"]["teacher"]["metrics"]) == {"accuracy", "macro_f1"}
    deploy = json.loads((out / "reports" / "deploy.json").read_text())
    for r in RECIPES:
        student = AutoModelForSequenceClassification.from_pretrained(out / "students" / r)
        assert student.config.id2label == dict(enumerate(LABELS))
        assert student.config.model_type == {"mobilebert": "mobilebert", "tinybert": "deberta-v2"}.get(r, "bert")
        assert deploy["models"][r]["onnx-fp32"]["max_abs_logit_diff"] <= 1e-3  # parity held (the stage checks it)
    # the cross-vocabulary students keep their own tokenizer, learn from the teacher's soft labels computed on the
    # teacher's tokens, and are scored and served on their own tokens
    teacher_vocab = AutoTokenizer.from_pretrained(src).get_vocab()
    mini_vocab = AutoTokenizer.from_pretrained(project / "students-from" / "bert-mini").get_vocab()
    assert mini_vocab != teacher_vocab
    for r in CROSS_VOCAB:
        assert AutoTokenizer.from_pretrained(out / "students" / r).get_vocab() == mini_vocab
        assert AutoTokenizer.from_pretrained(out / "onnx" / r / "tokenizer").get_vocab() == mini_vocab
        assert f"task_distill@{r}" in proc.stdout and "it learns from the teacher's soft labels" in proc.stdout
        own = tokenize_task(load_from_disk(str(out / "data" / "dev")), AutoTokenizer.from_pretrained(out / "students" / r), 32)
        again = score(AutoModelForSequenceClassification.from_pretrained(out / "students" / r), own, task)
        assert summary["models"][r]["score"] == pytest.approx(again["accuracy"], abs=1e-9)
    # the teacher-initialised control: the TinyBERT-style shape started from the DeBERTa teacher's weights, trained
    # on the labels alone, scored beside the student in the report, neither exported nor registered
    control = out / "init_controls" / "tinybert"
    assert json.loads((control / "kdistill.json").read_text())["control"] == "teacher-init"
    c_cfg, s_cfg = (json.loads((d / "config.json").read_text()) for d in (control, out / "students" / "tinybert"))
    assert [c_cfg[k] for k in ("model_type", "num_hidden_layers", "hidden_size")] == \
        [s_cfg[k] for k in ("model_type", "num_hidden_layers", "hidden_size")] == ["deberta-v2", 2, 16]
    assert "teacher-initialised control" in (control / "README.md").read_text()
    assert summary["models"]["teacher-init-tinybert"]["score"] == pytest.approx(
        json.loads((control / "metrics.json").read_text())["accuracy"], abs=1e-9)
    report = (out / "reports" / "report.md").read_text()
    assert "## What distillation buys" in report and "| tinybert | " in report.split("## What distillation buys")[1]
    assert "teacher-init-tinybert" not in deploy["models"]
    # registered with the label names, and the served model answers with them
    mlflow.set_tracking_uri(uri)
    for r in RECIPES:
        preds = mlflow.pyfunc.load_model(f"models:/own-reviews-{r}@champion").predict(["great fun", "awful and dull"])
        assert set(preds["label"]) <= set(LABELS) and preds["probability"].between(0, 1).all()
    # `make serve` answers over HTTP with the user's label names: a DeBERTa-family student, and a cross-vocabulary
    # BERT student tokenizing requests its own way
    with served("own-reviews-minilm", uri, cwd=project) as (server, url):
        answers = invoke(url, ["great fun", "awful and dull", "a film"])
        assert len(answers) == 3 and {a["label"] for a in answers} <= set(LABELS)
    assert server.returncode == 0
    with served("own-reviews-tinybert", uri, cwd=project) as (proc, url):
        answers = invoke(url, ["great fun", "awful and dull", "a film"])
        assert len(answers) == 3 and {a["label"] for a in answers} <= set(LABELS)
    assert proc.returncode == 0


@pytest.mark.slow
def test_the_run_tracks_registers_and_aliases_over_http_on_postgresql(own_project, tracking_server):
    """The shared MLflow (`make mlflow-server`): loopback only, no password in its log, PostgreSQL the store, the
    artifacts served by it, and nothing tracked anywhere else."""
    if tracking_server is None:
        pytest.skip("PostgreSQL not available here (creating its cluster needs root, or Debian's package)")
    project, proc, url = own_project
    _, pg_port, db, run_dir = tracking_server
    assert proc.returncode == 0, "the run failed: see test_a_csv_with_string_labels_and_a_fine_tuned_deberta_teacher..."
    # the tracking server and PostgreSQL listen on loopback only
    server_pid = int((run_dir / "mlflow-server.pid").read_text())
    assert {ip for ip, _ in listening_addresses(server_pid)} == {"127.0.0.1"}
    assert psql(pg_port, db, "SHOW listen_addresses").strip() == "127.0.0.1"
    assert (run_dir / "mlflow-server.log").read_text().count("postgresql://") == 0  # the password is not logged
    assert not (project / "mlflow.db").exists()  # nothing went to a local store

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    names = {m.name for m in client.search_registered_models()}
    assert {f"own-reviews-{r}" for r in RECIPES} <= names
    for r in RECIPES:
        assert client.get_model_version_by_alias(f"own-reviews-{r}", "champion").tags["variant"].startswith("onnx-")
    exp = client.get_experiment_by_name("kdistill-own-reviews")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName = 'task_distill@tinybert'")
    assert runs and {"loss/emb", "loss/hidn", "loss/attn", "loss/pred"} <= set(runs[0].data.metrics)
    assert client.get_metric_history(runs[0].info.run_id, "loss/pred")  # every step on record, over HTTP
    # artifacts went through the server (mlflow-artifacts:/), into its folder
    assert runs[0].info.artifact_uri.startswith("mlflow-artifacts:/")
    assert any((run_dir / "mlflow-artifacts").rglob("model.onnx"))
    # the store really is PostgreSQL, and the run left no run RUNNING there
    assert {f"own-reviews-{r}" for r in RECIPES} <= set(psql(pg_port, db, "SELECT name FROM registered_models").split())
    assert psql(pg_port, db, "SELECT count(*) FROM runs WHERE status = 'RUNNING'").strip() == "0"
