"""Token classification data: reading (CoNLL, JSON Lines), refusals naming the file and line, the tag scheme,
entity chunking, sub-token alignment and the entity metric, on hand-made cases; and the shipped WNUT-17 files."""

import hashlib
import json

import pytest
import torch
from transformers import BertTokenizerFast

from kdistill.data.glue import DataError
from kdistill.data.entities import entities, entity_metrics
from kdistill.data.tagged import IGNORE, check_known_tags, detect_scheme, entity_counts, read_tagged, tag_names

from .conftest import ROOT

CONLL = """-DOCSTART- -X- O O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


@pytest.fixture
def tok():
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##believ", "##able", "new", "york", "is", "big", "."]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(words)}, do_lower_case=True)


def test_conll_sentences_skip_docstart_and_take_the_named_tag_column(tmp_path):
    f = tmp_path / "train.conll"
    f.write_text(CONLL)
    rows = read_tagged(f)
    assert [r.words for r in rows] == [("EU", "rejects", "German", "call"), ("Peter", "Blackburn")]
    assert rows[0].tags == ("B-ORG", "O", "B-MISC", "O") and rows[1].where == "line 8"
    chunks = read_tagged(f, tag_column=2)  # the chunk column instead
    assert chunks[0].tags == ("B-NP", "B-VP", "B-NP", "I-NP")
    # a whitespace-only line ends a sentence too (WNUT-17 writes a tab there)
    f.write_text("a\tO\nb\tB-x\n\t\nc\tO\n")
    assert [r.words for r in read_tagged(f)] == [("a", "b"), ("c",)]


def test_json_lines_rows_hold_a_list_of_words_and_a_list_of_tags(tmp_path):
    f = tmp_path / "dev.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"tokens": ["New", "York"], "tags": ["B-loc", "I-loc"]},
                                                   {"tokens": ["is"], "tags": ["O"]}]))
    rows = read_tagged(f)
    assert rows[0].words == ("New", "York") and rows[1].tags == ("O",) and rows[1].where == "row 2"


@pytest.mark.parametrize("text, fmt, message", [
    ('{"tokens": ["a", "b"], "tags": ["O"]}\n', "jsonl", r"dev\.jsonl: row 1: 2 words and 1 tags"),
    ('{"tokens": ["a"], "tags": "O"}\n', "jsonl", r"row 1, column 'tags': expected a list of strings, got str"),
    ('{"words": ["a"], "tags": ["O"]}\n', "jsonl", r"row 1, column 'tokens': expected a list of strings, got nothing"),
    ("a O\nb\n", "conll", r"dev\.conll: line 2: 'b' has one column"),
    ("a NN O\nb O\n", "conll", r"line 2: 2 columns where the lines before have 3"),
    ("a PER\n", "conll", r"line 1: word 1 \('a'\) has tag 'PER'; a tag is O or B-/I-/E-/S-"),
    ("\n\n", "conll", r"no sentences"),
])
def test_a_bad_row_is_refused_naming_the_file_and_where(tmp_path, text, fmt, message):
    f = tmp_path / f"dev.{fmt}"
    f.write_text(text)
    with pytest.raises(DataError, match=message):
        read_tagged(f)


def test_a_dev_tag_that_train_never_has_is_refused(tmp_path):
    train, dev = tmp_path / "train.conll", tmp_path / "dev.conll"
    train.write_text("a B-per\nb O\n")
    dev.write_text("x O\n\ny B-per\nz B-loc\n")
    known = set(tag_names(read_tagged(train)))
    with pytest.raises(DataError, match=r"dev\.conll: line 3: word 2 \('z'\) has tag 'B-loc', which the train split "
                                        r".*train\.conll never has \(2 tags: B-per, O\)"):
        check_known_tags(dev, read_tagged(dev), known, train)


def test_the_scheme_is_detected_and_each_decodes_to_the_same_entities(tmp_path):
    def rows(*seqs):
        f = tmp_path / "t.jsonl"
        f.write_text("\n".join(json.dumps({"tokens": ["w"] * len(s), "tags": s}) for s in seqs))
        return read_tagged(f)

    # "John Smith visited New York and Paris" with two adjacent persons at the end: "Ann Bob"
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-LOC", "B-PER", "B-PER"]
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "I-LOC", "O", "I-LOC", "I-PER", "B-PER"]
    bioes = ["B-PER", "E-PER", "O", "B-LOC", "E-LOC", "O", "S-LOC", "S-PER", "S-PER"]
    want = [("PER", 0, 1), ("LOC", 3, 4), ("LOC", 6, 6), ("PER", 7, 7), ("PER", 8, 8)]
    for seq, scheme in ((iob2, "IOB2"), (iob1, "IOB1"), (bioes, "BIOES")):
        assert detect_scheme(rows(seq)) == scheme
        assert entities(seq) == want, scheme
    assert tag_names(rows(bioes)) == ("O", "B-LOC", "E-LOC", "S-LOC", "B-PER", "E-PER", "S-PER")


def test_a_words_tag_sits_on_its_first_subtoken_and_dropped_words_count_as_o(tok):
    from datasets import Dataset

    from kdistill.data.batches import pad_collate, tokenize_task
    from kdistill.data.task import Task

    labels = ("O", "B-loc", "I-loc", "B-misc")
    task = Task("toy", "token_classification", labels, "entity_f1", False, ("entity_f1",), "IOB2")
    # "Unbelievable" is three sub-tokens; a zero-width space and a control character give none
    words = ["Unbelievable", "\u200b", "New", "York", "\x07", "."]
    tags = ["B-misc", "B-loc", "B-loc", "I-loc", "O", "O"]
    ds = Dataset.from_dict({"words": [words], "tags": [[labels.index(t) for t in tags]]})
    enc = tokenize_task(ds, tok, 32)
    assert tok.convert_ids_to_tokens(enc[0]["input_ids"]) == ["[CLS]", "un", "##believ", "##able", "new", "york", ".",
                                                               "[SEP]"]
    assert enc[0]["labels"] == [IGNORE, 3, IGNORE, IGNORE, 1, 2, 0, IGNORE]
    assert enc[0]["first"] == [1, None, 4, 5, None, 6]
    # batches pad the per-token labels with -100 and leave out what only scoring reads
    short = tokenize_task(Dataset.from_dict({"words": [["new"]], "tags": [[1]]}), tok, 32)
    batch = pad_collate([enc[0], short[0]])
    assert batch["labels"][1].tolist() == [IGNORE, 1, IGNORE] + [IGNORE] * 5
    assert "first" not in batch and "word_labels" not in batch
    # a prediction per sub-token read back per word: the dropped word (gold B-loc) becomes O, a missed entity
    logits = torch.zeros(1, 8, 4)
    for pos, tag in enumerate([0, 3, 1, 1, 1, 2, 0, 0]):
        logits[0, pos, tag] = 1.0
    assert [labels[i] for i in task.predictions(logits, enc)[0]] == ["B-misc", "O", "B-loc", "I-loc", "O", "O"]
    m = task.score_rows(logits, enc)
    assert m["entity_precision"] == 1.0 and m["entity_recall"] == pytest.approx(2 / 3)
    # max_len cuts words off: they get no sub-token either
    assert tokenize_task(ds, tok, 6)[0]["first"] == [1, None, 4, None, None, None]  # [CLS] un ##believ ##able new [SEP]


def test_entity_metrics_are_seqevals_on_hand_made_cases():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    m = entity_metrics(gold, pred)
    # 3 gold entities, 3 predicted, 2 exact matches (a span that is off by a word counts as wrong)
    assert m["entity_precision"] == pytest.approx(2 / 3) and m["entity_recall"] == pytest.approx(2 / 3)
    assert m["entity_f1"] == pytest.approx(2 / 3)
    assert m["f1_PER"] == 1.0 and m["f1_ORG"] == 1.0 and m["f1_LOC"] == 0.0
    assert entity_metrics([["B-PER", "I-PER"]], [["B-PER", "O"]])["entity_f1"] == 0.0  # partial overlap: no credit


WNUT = {"train.conll": ("731820e13f71af324c6b55a1575ec2ce59fbaa2a0806f8f0400b98d56cd6a7a5", 3394),
        "dev.conll": ("e053b752b8155113ca66e7db08af5f2f5f43ab993694e4774f1ec5bad42312d8", 1009),
        "test.conll": ("2aa79b764e56ec9264a1b30fdd9b70195bd00ff400b62edd8f399d5f13c178f0", 1287)}


def test_the_shipped_wnut17_files_are_the_manifests_and_read_cleanly():
    d = ROOT / "data" / "ner" / "wnut17"
    manifest = (d / "MANIFEST.tsv").read_text()
    train = read_tagged(d / "train.conll")
    for name, (sha, sentences) in WNUT.items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == sha
        assert f"{name}\t{sentences}\t" in manifest and sha in manifest
        rows = train if name == "train.conll" else read_tagged(d / name)
        assert len(rows) == sentences
        check_known_tags(d / name, rows, set(tag_names(train)), d / "train.conll")
    assert detect_scheme(train) == "IOB2" and len(tag_names(train)) == 13
    assert entity_counts(train) == {"corporation": 221, "creative-work": 140, "group": 264, "location": 548,
                                    "person": 660, "product": 142}
    assert "CC BY 4.0" in manifest


def test_params_for_token_classification_default_the_columns_and_refuse_what_cannot_hold():
    from kdistill.config import ParamsError, load_params

    p = load_params(overrides={"data": {"kind": "token_classification", "train": "t.conll"}})
    assert (p.data.text, p.data.label) == ("tokens", "tags")  # params.yaml's text/label mean the lists here
    named = load_params(overrides={"data": {"kind": "token_classification", "train": "t.jsonl", "text": "words"}})
    assert named.data.text == "words"
    with pytest.raises(ParamsError, match="key 'augment.method': wordnet replaces words"):
        load_params(overrides={"data": {"kind": "token_classification", "train": "t.conll"},
                               "augment": {"method": "wordnet"}})
    with pytest.raises(ParamsError, match="key 'data.text_pair': a token-classification row is one list of words"):
        load_params(overrides={"data": {"kind": "token_classification", "train": "t.conll", "text_pair": "b"}})
