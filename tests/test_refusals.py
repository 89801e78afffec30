"""First contact: what a new user gets wrong is refused by `make pipeline PROFILE=...` in seconds, in one line, before
any Prefect server starts and before anything is written under outputs*."""

import json
import re
import subprocess
import time

import pytest
import yaml
from transformers import GPT2Config, GPT2Model, RobertaTokenizerFast

from .conftest import copy_project, flow_env
from .families import save_teacher
from .test_own_data_pipeline import LABELS, reviews, write_csv

# lines a user reads past: Prefect's and the stages' log lines (time | level | ...) and make's own echo of the command
NOISE = re.compile(r"^(\d\d:\d\d:\d\d\.\d+ \| |\s*[\w@.-]+ \| |.*\d+%\||make(\[\d+\])?: (Entering|Leaving) )")


def _student_shapes(smoke: dict) -> dict:
    """Small students that fit a 2-layer, 32-wide teacher, so the refusal under test is the first one met."""
    return {**smoke["general_distill"],
            "tinybert": {"student": {"layers": 2, "hidden": 16, "heads": 4, "ffn": 32}, "optim": {"max_steps": 3}},
            "distilbert": {"init_layers": [0, 1], "optim": {"max_steps": 3}},
            "mobilebert": {"student": {"bottleneck": 8, "heads": 2, "ffn": 16, "stacked_ffn": 1, "embedding": 8},
                           "progressive": {"steps_per_layer": 1, "batch_size": 8},
                           "joint": {"optim": {"batch_size": 8, "max_steps": 2}}},
            "minilm": {"student": {"layers": 2, "hidden": 16, "heads": 4, "ffn": 32}, "relation_heads": 4,
                       "optim": {"max_steps": 3}}}


@pytest.fixture(scope="module")
def bad_project(tmp_path_factory):
    """A project copy with a CSV task, and one profile per mistake a new user makes."""
    project = copy_project(tmp_path_factory.mktemp("refusals") / "proj")
    write_csv(project / "data" / "mine" / "train.csv", reviews(60, 0))
    write_csv(project / "data" / "mine" / "dev.csv", reviews(15, 1))
    write_csv(project / "data" / "mine" / "dev-unseen.csv", reviews(14, 1) + [("a film", "mixed")])
    teachers = project / "teachers"
    # a fine-tuned head that names the data's labels in another order
    names = list(reversed(LABELS))
    save_teacher("roberta", teachers / "reordered", "seq", num_labels=3, id2label=dict(enumerate(names)),
                 label2id={n: i for i, n in enumerate(names)}, architectures=["RobertaForSequenceClassification"])
    # a decoder: no recipe reads it
    GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=64, bos_token_id=0,
                         eos_token_id=0)).save_pretrained(teachers / "gpt2")
    # a tokenizer built from file paths the old way: transformers 5 gives it 5 entries, and every text 0 tokens
    save_teacher("roberta", teachers / "empty-tokenizer", "mlm")
    files = teachers / "empty-tokenizer" / "_tok"
    RobertaTokenizerFast(vocab_file=str(files / "vocab.json"), merges_file=str(files / "merges.txt")).save_pretrained(
        teachers / "empty-tokenizer")
    smoke = yaml.safe_load((project / "profiles" / "smoke.yaml").read_text())
    own = {"extends": "smoke.yaml", "base": {"task": "mine", "teacher": "teachers/reordered", "validation_rows": 10},
           "data": {"train": "data/mine/train.csv", "dev": "data/mine/dev.csv", "text": "review", "label": "sentiment"},
           "augment": {"method": "none"}, "general_distill": _student_shapes(smoke)}

    def profile(name, **change):
        body = json.loads(json.dumps(own))
        for key, value in change.items():
            section, field = key.split("__")
            body.setdefault(section, {})[field] = value
        (project / "profiles" / f"{name}.yaml").write_text(yaml.safe_dump(body))

    (project / "profiles" / "typo.yaml").write_text("extends: smoke.yaml\nbase: {tacher: offline:all-MiniLM-L6-v2}\n")
    profile("missing-file", data__train="data/mine/nothing.csv")
    profile("unseen-label", data__dev="data/mine/dev-unseen.csv")
    profile("reordered")
    profile("decoder", base__teacher="teachers/gpt2")
    profile("empty-tokenizer", base__teacher="teachers/empty-tokenizer")
    # NER rows whose words and tags do not line up (JSON Lines: the row is named)
    ner = project / "data" / "ner-bad" / "train.jsonl"
    ner.parent.mkdir(parents=True)
    ner.write_text('{"tokens": ["Ann", "lives"], "tags": ["B-per", "O"]}\n{"tokens": ["in", "Paris"], "tags": ["O"]}\n')
    profile("ner-mismatch", data__train="data/ner-bad/train.jsonl", data__dev=None, data__kind="token_classification",
            data__text="tokens", data__label="tags")
    # a SQuAD file whose second answer_start is off by one (the nested layout: the question is named by its path)
    qa = project / "data" / "qa-bad" / "train.json"
    qa.parent.mkdir(parents=True)
    qa.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{
        "context": "Ann wrote the book in Paris.",
        "qas": [{"id": "q1", "question": "Who wrote it?", "answers": [{"text": "Ann", "answer_start": 0}]},
                {"id": "q2", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 21}]}]}]}]}))
    profile("qa-offset", data__train="data/qa-bad/train.json", data__dev=None, data__kind="extractive_qa")
    # a random student wider than the teacher is fine, but not once its teacher-initialised control is asked for
    wide = _student_shapes(smoke)["tinybert"]
    profile("wide-control", task_distill__teacher_init_controls=["tinybert"],
            general_distill__tinybert={**wide, "student": {**wide["student"], "hidden": 64, "init": "random"}})
    # a control for a recipe the profile does not distil
    profile("control-left-out", base__recipes=["tinybert", "minilm"], task_distill__teacher_init_controls=["distilbert"])
    # a study of a recipe the profile does not distil (refused by `make seeds`, not by `make pipeline`)
    profile("study-left-out", base__recipes=["tinybert", "minilm"], studies__seeds={"recipes": ["distilbert"]},
            data__labels=names)  # the teacher's order: the rest of the profile passes
    return project


def _make(project, profile, target="pipeline"):
    t0 = time.time()
    proc = subprocess.run(["make", "--no-print-directory", target, f"PROFILE={profile}"], cwd=project,
                          env=flow_env(project), capture_output=True, text=True, timeout=300)
    return proc, time.time() - t0


REFUSALS = {
    "typo": r"unknown key 'base\.tacher'; did you mean 'base\.teacher'\?",
    "missing-file": r"profiles/missing-file.yaml: key 'data\.train': .*data/mine/nothing\.csv does not exist",
    "unseen-label": r"dev-unseen\.csv.*'mixed'",
    "reordered": r"names the same labels in another order: teacher \['positive', 'neutral', 'negative'\], "
                 r"data \['negative', 'neutral', 'positive'\]",
    "decoder": r"teacher .*is a 'gpt2' model: no recipe runs on it",
    "empty-tokenizer": r"profiles/empty-tokenizer.yaml: key .base.teacher.: the tokenizer of teachers/empty-tokenizer "
                       r"turns the first rows of data/mine/train\.csv .*into 0 tokens \(its vocabulary has \d+ entries\)",
    "ner-mismatch": r"data/ner-bad/train\.jsonl: row 2: 2 words and 1 tags; each word needs one tag",
    "qa-offset": r"data/qa-bad/train\.json, data\[0\]\.paragraphs\[0\]\.qas\[1\] \(id q2\): answer_start 21 does "
                 r"not point at the answer 'Paris' in the context \(there it reads ' Pari'\)",
    "wide-control": r"profiles/wide-control.yaml: key 'general_distill\.tinybert\.student': .*hidden size.* "
                    r"\(task_distill\.teacher_init_controls builds the tinybert student from the teacher's weights",
    "control-left-out": r"profiles/control-left-out.yaml: key 'task_distill\.teacher_init_controls': distilbert is not "
                        r"among base\.recipes \['tinybert', 'minilm'\], so it has no student to compare with",
}


# `make seeds PROFILE=...` refuses what only a study reads, the same way
STUDY_REFUSALS = {
    "study-left-out": r"profiles/study-left-out.yaml: key 'studies\.seeds\.recipes': distilbert not among base\.recipes "
                      r"\['tinybert', 'minilm'\]",
}


@pytest.mark.parametrize("target,profile", [("pipeline", p) for p in REFUSALS] + [("seeds", p) for p in STUDY_REFUSALS])
def test_make_pipeline_refuses_a_bad_profile_in_one_line_before_any_server_starts(bad_project, target, profile):
    proc, seconds = _make(bad_project, profile, target)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip() and not NOISE.match(line)]
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    errors = [line for line in said if line.startswith("error: ")]
    assert len(errors) == 1 and re.search({**REFUSALS, **STUDY_REFUSALS}[profile], errors[0]), said
    # the error, make's echo of the command and make's own last line: nothing else
    assert len(said) <= 3, said
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "temporary server" not in proc.stdout + proc.stderr  # refused before Prefect started
    assert not list(bad_project.glob("outputs*")), "a refused run wrote outputs"
    print(f"{profile}: refused in {seconds:.1f} s")


def test_the_old_way_of_building_a_bpe_tokenizer_really_gives_zero_tokens(bad_project):
    """The fixture's broken teacher is broken as the refusal says (so the test above measures the check, not luck)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bad_project / "teachers" / "empty-tokenizer")
    assert tok("a good film", add_special_tokens=False)["input_ids"] == []
