"""Extractive question answering in the engine, on hand-made rows and tiny random BERT QA models: SQuAD files read
and refused row by row, contexts cut into windows (an answer in the second window, one across a window boundary, a
context shorter than one window), spans chosen over windows, SQuAD's exact match and F1, the soft start/end loss
against a hand computation, and the exported model's single `logits` output."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

from kdistill.data.answers import best_span, read_answers, span_predictions, squad_metrics
from kdistill.data.batches import pad_collate, tokenize_task
from kdistill.data.task import Task
from kdistill.distill.objectives import Prediction, Supervised, teacher_logits
from kdistill.errors import DataError

TASK = Task("toy-qa", "extractive_qa", None, "f1", True, ("f1", "exact_match"), None, 2, 5)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "who", "wrote", "it", "?", "ann", "bob", "did", "a", "b", "c",
         "d", "e", "f", "g", "h", "where", "is", "paris", "in", "france", "."]


@pytest.fixture(scope="module")
def tok():
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(WORDS)}, do_lower_case=True)


def questions(rows) -> Dataset:
    """rows: (question, context, answer text); the answer's start is its first occurrence in the context."""
    return Dataset.from_dict({"idx": list(range(len(rows))), "id": [f"q{i}" for i in range(len(rows))],
                              "question": [q for q, _, _ in rows], "context": [c for _, c, _ in rows],
                              "answer_texts": [[a] for _, _, a in rows],
                              "answer_starts": [[c.index(a)] for _, c, a in rows]})


def test_windows_place_each_answer_in_the_window_that_holds_it(tok):
    # 12 tokens per window: [CLS] who wrote it ? [SEP], 5 context tokens, [SEP]; consecutive windows share 2
    rows = [("who wrote it?", "a b c d e f ann did", "ann"),  # windows a..e, d..did: the answer in the second
            ("who wrote it?", "a b c d e f bob did", "e f bob"),  # across the first window's end
            ("who wrote it?", "ann did", "ann")]  # shorter than one window
    w = tokenize_task(questions(rows), tok, 12, doc_stride=2)
    by_q = {}
    for ex, labels, ids, offs in zip(w["example"], w["labels"], w["input_ids"], w["offsets"]):
        by_q.setdefault(ex, []).append((labels, tok.convert_ids_to_tokens(ids), offs))
    assert [len(by_q[i]) for i in range(3)] == [2, 2, 1]
    spans = [(tokens[a], tokens[b]) if a else None for (a, b), tokens, _ in by_q[0]]
    assert spans == [None, ("ann", "ann")]  # the first window points at [CLS]: its answer is elsewhere
    # question 1: "e f bob" starts in window 1 (a..e) but ends past it: only window 2 (d..did) holds it whole
    assert [lab for lab, _, _ in by_q[1]][0] == [0, 0]
    (a, b), tokens, offs = by_q[1][1]
    assert tokens[a: b + 1] == ["e", "f", "bob"]
    assert rows[1][1][offs[a][0]: offs[b][1]] == "e f bob"
    (a, b), tokens, offs = by_q[2][0]
    assert tokens[a] == "ann" and offs[0] == [-1, -1]  # [CLS] and the question carry no context offsets


def test_the_best_span_over_all_windows_wins_and_stays_inside_the_context(tok):
    rows = [("who wrote it?", "a b c d e f ann did", "ann")]
    w = tokenize_task(questions(rows), tok, 12, doc_stride=2)
    L = max(len(x) for x in w["input_ids"])
    logits = np.zeros((len(w), L, 2), dtype=np.float32)
    logits[:, 0, :] = 50.0  # [CLS] scores highest everywhere: never an answer
    logits[:, 1, :] = 40.0  # nor the question's tokens
    a, b = w["labels"][1]
    logits[1, a, 0], logits[1, b, 1] = 9.0, 9.0  # the second window points at "ann" ...
    logits[0, 7, 0], logits[0, 8, 1] = 5.0, 5.0  # ... more surely than the first at "b c"
    assert list(span_predictions(logits, w, 5)) == ["ann"]
    logits[0, 7, 0], logits[0, 8, 1] = 12.0, 12.0
    assert list(span_predictions(logits, w, 5)) == ["b c"]
    assert list(span_predictions(logits, w, 1)) == ["ann"]  # "b c" is two tokens: longer than max_answer_len 1
    offs = [[-1, -1], [0, 1], [2, 3]]
    # start at token 2 and end at token 1 would score 10: refused (end < start); 6 is the best valid span
    assert best_span(np.array([0.0, 1.0, 5.0]), np.array([0.0, 5.0, 1.0]), offs, 3) == (6.0, 0, 1)
    assert best_span(np.zeros(2), np.zeros(2), [[-1, -1], [-1, -1]], 3) is None


def test_squad_metrics_use_the_official_normalisation():
    got = squad_metrics(["The Denver Broncos", "in 1990", "", "Bob"], [["Denver Broncos"], ["1990", "the year 1990"],
                                                                      ["x"], ["ann", "bob!"]])
    # EM: articles and punctuation removed -> 1, 0, 0, 1; F1: 1, 2/3 (in 1990 vs 1990), 0, 1
    assert got["exact_match"] == pytest.approx(0.5)
    assert got["f1"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4, abs=1e-6)


def model(seed: int) -> BertForQuestionAnswering:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, **TASK.model_config())
    return BertForQuestionAnswering(cfg).eval()


def test_soft_start_and_end_distributions_match_a_hand_computation(tok, tmp_path):
    rows = [("who wrote it?", "a b c d e f ann did", "ann"), ("where is paris?", "paris is in france .", "france")]
    w = tokenize_task(questions(rows), tok, 12, doc_stride=2)
    batch = pad_collate([w[i] for i in range(len(w))])
    assert batch["labels"].shape == (len(w), 2)
    student, teacher = model(0), model(1)
    obj = Prediction(student, teacher, {"pred": 1.0, "hard": 1.0}, temperature=2.0, kind="kl", t2_scaling=True)
    got = obj(batch)
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"])
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"])
    real = batch["attention_mask"].bool()

    def kl(sl, tl):  # per window over its real tokens only, T = 2, T^2-scaled, batch mean
        out = []
        for i in range(len(sl)):
            p = F.softmax(tl[i][real[i]] / 2, -1)
            out.append((p * (p.log() - F.log_softmax(sl[i][real[i]] / 2, -1))).sum())
        return torch.stack(out).mean() * 4

    want = (kl(s.start_logits, t.start_logits) + kl(s.end_logits, t.end_logits)) / 2
    torch.testing.assert_close(got["pred"], want)
    gold = batch["labels"]
    hard = (F.cross_entropy(s.start_logits, gold[:, 0]) + F.cross_entropy(s.end_logits, gold[:, 1])) / 2
    torch.testing.assert_close(got["hard"], hard)  # no padding in the shortest window's positions of a gold span
    torch.testing.assert_close(Supervised(student)(batch)["hard"], hard)
    # the teacher's start/end logits, cached once per window ([windows, tokens, 2]), give the same loss
    cached = teacher_logits(teacher, w, pad_collate, cache_dir=tmp_path)
    assert cached.shape == (len(w), max(len(x) for x in w["input_ids"]), 2)
    again = Prediction(student, None, {"pred": 1.0}, temperature=2.0, kind="kl", t2_scaling=True, cached_logits=cached)
    torch.testing.assert_close(again(batch)["pred"], want)
    # scoring: per question, over its windows
    assert set(TASK.score_rows(cached, w)) == {"f1", "exact_match"}


def test_the_exported_qa_model_has_one_logits_output_with_parity(tok, tmp_path):
    import onnxruntime as ort

    from kdistill.deploy.onnx_export import export_onnx, load_for_export, parity, predict_onnx, session
    from kdistill.train.evaluation import predict

    model(0).save_pretrained(tmp_path / "m")
    loaded = load_for_export(tmp_path / "m")
    export_onnx(loaded, tmp_path / "m.onnx")
    assert [o.name for o in ort.InferenceSession(str(tmp_path / "m.onnx")).get_outputs()] == ["logits"]
    rows = [("who wrote it?", "a b c d e f ann did", "ann"), ("where is paris?", "paris is in france .", "france")]
    w = tokenize_task(questions(rows), tok, 12, doc_stride=2)
    ref = predict(loaded, w).numpy()
    par = parity(ref, predict_onnx(session(tmp_path / "m.onnx", 1), w), False, span=True)
    assert par.max_abs_diff < 1e-4 and par.labels_differing == 0



def test_the_served_int8_model_computes_each_window_as_the_export_stage_scored_it(tok, tmp_path):
    """Dynamic int8 quantization scales each activation tensor by the range of all a call holds (padding and the
    other rows included), so the served model (one window per call, unpadded) and the export stage's score of the
    variant it serves (`predict_onnx` one row per call) must batch alike: the same logits, bit for bit, per window."""
    import importlib.util

    from kdistill.deploy.onnx_export import export_onnx, load_for_export, predict_onnx, quantize_int8, session

    model(1).save_pretrained(tmp_path / "m")
    export_onnx(load_for_export(tmp_path / "m"), tmp_path / "m.onnx")
    quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx")
    int8 = session(tmp_path / "m.int8.onnx", 1)
    # windows of unequal length within a question (the last is shorter) and across questions
    rows = [("who wrote it?", "a b c d e f ann did", "ann"), ("where is paris?", "paris is in france .", "france"),
            ("who?", "a b c d e f g h bob did it", "bob")]
    w = tokenize_task(questions(rows), tok, 12, doc_stride=2)
    scored = predict_onnx(int8, w, batch_size=1)

    spec = importlib.util.spec_from_file_location("served", "kdistill/deploy/serving_model.py")
    served = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(served)
    calls = []

    class Recorded:  # the real int8 session, each call's logits kept
        def run(self, names, feed):
            out = int8.run(names, feed)
            calls.append(out[0][0])
            return out

    m = served.OnnxTextClassifier()
    m.kind, m.labels, m.max_len, m.doc_stride, m.max_answer_len = "extractive_qa", [], 12, 2, 5
    m.tokenizer, m.session, m.inputs = tok, Recorded(), {i.name for i in int8.get_inputs()}
    got = m.predict(None, {"question": [q for q, _, _ in rows], "context": [c for _, c, _ in rows]})
    assert len(calls) == len(w) > len(rows)  # one call per window
    assert len({len(c) for c in calls}) > 1  # unpadded: the windows' own lengths
    for i, logits in enumerate(calls):
        assert len(logits) == len(w[i]["input_ids"]) and np.array_equal(logits, scored[i, : len(logits)]), i
    assert list(got["answer"]) == list(span_predictions(scored, w, 5))

def squad_file(path, answer_start=0, question="Who?", answers=None):
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": "Ann wrote it.", "qas": [{"id": "a1", "question": question, "answers": answers if answers is not None
                                              else [{"text": "Ann", "answer_start": answer_start}]}]}]}]}))
    return path


def test_squad_files_and_tables_are_read_and_bad_rows_refused_with_where(tmp_path):
    got = read_answers(squad_file(tmp_path / "ok.json"))
    assert [(q.id, q.question, q.texts, q.starts) for q in got] == [("a1", "Who?", ("Ann",), (0,))]
    with pytest.raises(DataError, match=r"qas\[0\] \(id a1\): answer_start 4 does not point at the answer 'Ann'"):
        read_answers(squad_file(tmp_path / "off.json", answer_start=4))
    with pytest.raises(DataError, match=r"qas\[0\] \(id a1\): the question is empty"):
        read_answers(squad_file(tmp_path / "empty.json", question="  "))
    with pytest.raises(DataError, match=r"no answer \(an unanswerable SQuAD 2.0 question\)"):
        read_answers(squad_file(tmp_path / "none.json", answers=[]))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"context": "Bob did.", "question": "Who did?",
                                "answers": {"text": ["Bob"], "answer_start": [0]}}) + "\n"
                    + json.dumps({"context": "Bob did.", "question": "Who did?"}) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl, line 2: no 'answers'"):
        read_answers(rows)


def test_per_question_scores_average_to_the_squad_metrics():
    from kdistill.data.answers import question_score

    pred = ["The Denver Broncos", "in 1990", "", "Bob"]
    gold = [["Denver Broncos"], ["1990", "the year 1990"], ["x"], ["ann", "bob!"]]
    got = squad_metrics(pred, gold)
    for m in ("f1", "exact_match"):
        assert np.mean([question_score(p, tuple(g), m) for p, g in zip(pred, gold)]) == pytest.approx(got[m], abs=1e-6)


SQUAD = {"train.json": ("1a8bc1bf4a48a12bb320488531798516e0b19d6ec3cb904d058af73c4388ea0e", 3012),
         "dev.json": ("7b6513a82afb0916f3d32bb01a596d8607972695e95f5af460b25bb9948aecf4", 795)}


def test_the_shipped_squad_files_are_the_manifests_and_read_cleanly():
    import hashlib

    from kdistill.paths import ROOT

    d = ROOT / "data" / "squad"
    manifest = (d / "MANIFEST.tsv").read_text()
    contexts = {}
    for name, (sha, questions) in SQUAD.items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == sha
        assert f"\t{questions}\t" in manifest and sha in manifest
        rows = read_answers(d / name)  # every answer_start points at its text
        assert len(rows) == questions
        contexts[name] = {q.context for q in rows}
    assert not contexts["train.json"] & contexts["dev.json"]  # split by article: no paragraph in both
    assert "CC BY-SA 4.0" in manifest


def test_params_for_extractive_qa_refuse_what_cannot_hold():
    from kdistill.config import ParamsError, load_params

    qa = {"kind": "extractive_qa", "train": "t.json"}
    assert load_params(overrides={"data": qa, "augment": {"method": "none"}}).data.doc_stride is None  # max_seq_len / 4
    with pytest.raises(ParamsError, match="key 'augment.method': wordnet replaces words, which would move the answers"):
        load_params(overrides={"data": qa, "augment": {"method": "wordnet"}})
    with pytest.raises(ParamsError, match="key 'data.doc_stride': 40 tokens of overlap"):
        load_params(overrides={"data": {**qa, "doc_stride": 40}, "augment": {"method": "none"}})
    with pytest.raises(ParamsError, match="key 'data.format': conll cannot hold questions"):
        load_params(overrides={"data": {**qa, "format": "conll"}, "augment": {"method": "none"}})


def test_a_teacher_with_a_qa_head_is_used_as_it_is_and_one_without_is_fine_tuned():
    from kdistill.teacher_head import TeacherHeadError, plan

    qa_head = BertConfig(architectures=["BertForQuestionAnswering"])
    bare = BertConfig(architectures=["BertForMaskedLM"])
    assert plan(qa_head, TASK, "auto", "t") == "use"
    assert plan(bare, TASK, "auto", "t") == "train"
    assert plan(qa_head, TASK, "train", "t") == "train"
    with pytest.raises(TeacherHeadError, match="no question-answering head"):
        plan(bare, TASK, "use", "t")
