"""Token classification in the engine: per-token soft targets and gold labels on the labelled sub-tokens only, the
teacher's per-token logits cached once, and a word-level entity score, on tiny random BERT token classifiers."""

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

from kdistill.data.batches import pad_collate, tokenize_task
from kdistill.data.task import Task
from kdistill.distill.objectives import Prediction, Supervised, teacher_logits
from kdistill.train.evaluation import predict, score

LABELS = ("O", "B-loc", "I-loc", "B-per", "I-per")
TASK = Task("toy-ner", "token_classification", LABELS, "entity_f1", False,
            ("entity_f1", "entity_precision", "entity_recall"), "IOB2")
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "new", "york", "is", "big", "ann", "lives", "in", "par", "##is",
         "and", "bob", "."]


@pytest.fixture(scope="module")
def rows():
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(WORDS)}, do_lower_case=True)
    sentences = [(["New", "York", "is", "big", "."], ["B-loc", "I-loc", "O", "O", "O"]),
                 (["Ann", "lives", "in", "Paris", "."], ["B-per", "O", "O", "B-loc", "O"]),
                 (["Bob", "and", "Ann", "."], ["B-per", "O", "B-per", "O"])]
    ds = Dataset.from_dict({"words": [w for w, _ in sentences],
                            "tags": [[LABELS.index(t) for t in tags] for _, tags in sentences]})
    return tokenize_task(ds, tok, 16)


def model(seed: int) -> BertForTokenClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, **TASK.model_config())
    return BertForTokenClassification(cfg).eval()


def test_soft_and_hard_terms_are_computed_on_the_labelled_subtokens_alone(rows):
    student, teacher = model(0), model(1)
    batch = pad_collate([rows[i] for i in range(len(rows))])
    obj = Prediction(student, teacher, {"pred": 1.0, "hard": 1.0}, temperature=2.0, kind="kl", t2_scaling=True)
    got = obj(batch)
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = batch["labels"] != -100
    assert keep.sum() == 14  # one per word ("Paris" is two sub-tokens: its second carries no label)
    s, t, gold = s[keep], t[keep], batch["labels"][keep]
    kl = (F.softmax(t / 2, -1) * (F.log_softmax(t / 2, -1) - F.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(got["pred"], kl)
    torch.testing.assert_close(got["hard"], F.cross_entropy(s, gold))
    torch.testing.assert_close(Supervised(student)(batch)["hard"], F.cross_entropy(s, gold))


def test_the_teachers_per_token_logits_are_cached_once_and_give_the_same_loss(rows, tmp_path):
    student, teacher = model(0), model(1)
    cached = teacher_logits(teacher, rows, pad_collate, cache_dir=tmp_path)
    assert cached.shape == (3, max(len(r) for r in rows["input_ids"]), len(LABELS))
    assert torch.equal(teacher_logits(teacher, rows, pad_collate, cache_dir=tmp_path), cached)  # read back
    batch = pad_collate([rows[2], rows[0]])  # another order and padding than the cache's
    live = Prediction(student, teacher, {"pred": 1.0})(batch)["pred"]
    torch.testing.assert_close(Prediction(student, None, {"pred": 1.0}, cached_logits=cached)(batch)["pred"], live)


def test_a_few_steps_on_gold_tags_reach_the_entities_and_the_score_is_entity_level(rows):
    m = model(0).train()
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3)
    batch = pad_collate([rows[i] for i in range(len(rows))])
    obj = Supervised(m)
    for _ in range(60):
        loss = obj(batch)["hard"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    logits = predict(m, rows)
    assert logits.shape[:2] == (3, max(len(r) for r in rows["input_ids"]))
    got = score(m, rows, TASK)
    assert got["entity_f1"] == 1.0 and got["f1_loc"] == 1.0 and got["f1_per"] == 1.0
    # an untrained model finds fewer: the score is the entities', not the tokens'
    assert score(model(3), rows, TASK)["entity_f1"] < 1.0


def test_the_served_token_classifier_answers_entities_with_character_offsets(tmp_path):
    """kdistill/deploy/serving_model.py for a token classifier, its session replaced by one that tags chosen words:
    the text is split into words, each word's tag read at its first sub-token, the tags grouped as seqeval groups
    them, and each entity's text, offsets and score follow from its words."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("served", "kdistill/deploy/serving_model.py")
    served = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(served)
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(WORDS)}, do_lower_case=True)
    want = {"new": "B-loc", "york": "I-loc", "ann": "B-per", "par": "B-loc"}  # by each word's first sub-token

    class Session:  # logits that put each word's tag on every one of its sub-tokens
        def run(self, names, feed):
            ids = feed["input_ids"][0].tolist()
            logits = np.zeros((1, len(ids), len(LABELS)), dtype=np.float32)
            words = tok.convert_ids_to_tokens(ids)
            current = None
            for pos, piece in enumerate(words):
                if not piece.startswith("##"):
                    current = piece
                tag = want.get(current, "O")
                logits[0, pos, LABELS.index(tag)] = 4.0
            return [logits]

    m = served.OnnxTextClassifier()
    m.kind, m.labels, m.max_len, m.tokenizer, m.session = "token_classification", list(LABELS), 32, tok, Session()
    m.inputs = {"input_ids", "attention_mask", "token_type_ids"}
    text = "Ann lives in New York, and Paris."
    got = m.predict(None, [text, "", "is big"])
    assert list(got.columns) == ["entities"]
    entities = got["entities"][0]
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in entities] == [
        ("Ann", "per", 0, 3), ("New York", "loc", 13, 21), ("Paris", "loc", 27, 32)]
    p = np.exp(4.0) / (np.exp(4.0) + len(LABELS) - 1)
    assert all(e["score"] == pytest.approx(p) for e in entities)
    assert list(got["entities"][1]) == [] and list(got["entities"][2]) == []
