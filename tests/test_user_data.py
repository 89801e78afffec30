"""The user's own labelled text: CSV/JSON Lines/Parquet/save_to_disk tables, string labels, 3+ classes, multi-label
and regression; every refusal names the file, the row and the column."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kdistill.config import ParamsError, parse_params
from kdistill.data.glue import DataError
from kdistill.data.splits import load_task_splits, read_user_splits
from kdistill.data.tables import Columns, read_table
from kdistill.data.task import label_counts
from kdistill.distill import losses as L

REVIEWS = [("great phone, love it", "positive"), ("it broke after a day", "negative"), ("it is a phone", "neutral"),
           ("wonderful screen", "positive"), ("awful battery", "negative"), ("arrived on tuesday", "neutral")] * 4


def write_csv(path, rows, header=("review", "sentiment")):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def params(tmp_path, **data):
    return parse_params({"base": {"task": "reviews", "validation_rows": 2},
                         "data": {"text": "review", "label": "sentiment", **data}})


@pytest.fixture
def in_root(monkeypatch, tmp_path):
    """Relative data paths resolve against the project root: point it at tmp_path."""
    import kdistill.data.splits as splits

    monkeypatch.setattr(splits, "ROOT", tmp_path)
    return tmp_path


def test_csv_with_string_labels_three_classes_and_a_held_out_dev(in_root):
    write_csv(in_root / "reviews.csv", REVIEWS)
    p = params(in_root, train="reviews.csv", dev_fraction=0.25)
    task, train, dev = load_task_splits(p)
    assert task.kind == "single_label" and task.labels == ("negative", "neutral", "positive")  # sorted by default
    assert task.model_config()["id2label"] == {0: "negative", 1: "neutral", 2: "positive"}
    assert len(train) == 18 and len(dev) == 6 and task.metric == "accuracy" and task.reported == ("accuracy", "macro_f1")
    # the held-out dev rows are seeded by data.split_seed, not base.seed: every seed of a study scores the same rows
    p2 = parse_params({**p.model_dump(), "base": {**p.base.model_dump(), "seed": 7}})
    assert sorted(load_task_splits(p2)[2]["sentence1"]) == sorted(dev["sentence1"])
    names = dict(zip(train["sentence1"], train["label"]))
    assert {task.labels[names[t]] for t, lab in REVIEWS if t in names and lab == "neutral"} == {"neutral"}
    assert sum(label_counts(task, train["label"]).values()) == 18


def test_stated_label_order_is_kept_and_json_lines_parquet_and_saved_datasets_read_alike(in_root):
    rows = [{"review": t, "sentiment": s} for t, s in REVIEWS]
    (in_root / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), in_root / "r.parquet")
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(in_root / "r_saved"))
    order = ["positive", "neutral", "negative"]
    got = []
    for name in ("r.jsonl", "r.parquet", "r_saved"):
        task, train, dev, _ = read_user_splits(params(in_root, train=name, dev=name, labels=order))
        assert task.labels == tuple(order)
        got.append(train["label"])
    assert got[0] == got[1] == got[2] and got[0][:3] == [0, 2, 1]


def test_integer_labels_sort_numerically_and_regression_reads_numbers(in_root):
    rows = [(f"text {i}", str(i % 11)) for i in range(30)]
    write_csv(in_root / "n.csv", rows)
    task = read_user_splits(params(in_root, train="n.csv", dev="n.csv"))[0]
    assert task.labels[:3] == ("0", "1", "2") and task.labels[-1] == "10"
    write_csv(in_root / "r.csv", [(f"text {i}", f"{i / 7:.3f}") for i in range(30)])
    task, train, _, _ = read_user_splits(params(in_root, train="r.csv", dev="r.csv", kind="regression"))
    assert task.labels is None and task.num_labels == 1 and task.metric == "pearson"
    assert train["label"][3] == pytest.approx(3 / 7, abs=1e-3)


def test_multi_label_rows_are_lists_and_become_multi_hot(in_root):
    rows = [{"review": "fast and cheap", "tags": ["speed", "price"]}, {"review": "slow", "tags": ["speed"]},
            {"review": "nothing to say", "tags": []}, {"review": "pricey", "tags": ["price"]}] * 3
    (in_root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = params(in_root, train="m.jsonl", dev="m.jsonl", kind="multi_label", label="tags")
    task, train, _, _ = read_user_splits(p)
    assert task.labels == ("price", "speed") and task.metric == "micro_f1"
    assert train["label"][:3] == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    assert task.model_config()["problem_type"] == "multi_label_classification"
    logits = torch.tensor([[2.0, -1.0], [-3.0, 0.5]])
    assert task.predictions(logits).tolist() == [[1, 0], [0, 1]]
    m = task.metrics([[1, 0], [0, 1]], [[1.0, 1.0], [0.0, 1.0]])
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 + 3)) and m["subset_accuracy"] == 0.5
    write_csv(in_root / "m.csv", [("fast and cheap", '["speed", "price"]'), ("slow", "speed")], ("review", "tags"))
    with pytest.raises(DataError, match=r"m.csv: row 2, column 'tags' \(data.label\): 'speed' is not a list of labels"):
        read_user_splits(params(in_root, train="m.csv", dev="m.csv", kind="multi_label", label="tags"))


def test_multilabel_soft_loss_is_the_binary_kl_of_each_label_by_hand():
    s, t = torch.tensor([[0.3, -1.2, 2.0]]), torch.tensor([[1.0, 0.0, -0.5]])
    T = 2.0
    want = 0.0
    for zs, zt in zip(s[0].tolist(), t[0].tolist()):
        ps, pt = 1 / (1 + np.exp(-zs / T)), 1 / (1 + np.exp(-zt / T))
        want += pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps))
    assert L.soft_multilabel_loss(s, t, T).item() == pytest.approx(want, rel=1e-5)
    assert L.soft_multilabel_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)
    assert L.hard_label_loss(s, torch.tensor([[1.0, 0.0, 1.0]])).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(s, torch.tensor([[1.0, 0.0, 1.0]])).item())


@pytest.mark.parametrize("rows,data,message", [
    ([("good", "positive")], {"text": "body"}, r"r.csv: no column 'body' \(data.text\); its columns: \['review', 'sentiment'\]"),
    ([("good", "positive"), ("  ", "negative")], {}, r"r.csv: row 2, column 'review' \(data.text\): empty text"),
    ([("good", "positive"), ("bad", "")], {}, r"r.csv: row 2, column 'sentiment' \(data.label\): no label"),
    ([("good", "1.5"), ("bad", "x")], {"kind": "regression"},
     r"r.csv: row 2, column 'sentiment' \(data.label\): 'x' is not a number"),
    ([("good", "positive"), ("bad", "negative"), ("meh", "neutral")], {"labels": ["positive", "negative"]},
     r"r.csv: row 3: label 'neutral' is not in data.labels \['positive', 'negative'\]"),
    ([("good", "positive")] * 3, {}, r"every row has the label 'positive'"),
])
def test_bad_rows_are_refused_with_file_row_and_column(in_root, rows, data, message):
    write_csv(in_root / "r.csv", rows)
    with pytest.raises(DataError, match=message):
        read_user_splits(params(in_root, train="r.csv", dev="r.csv", **data))


def test_a_dev_label_that_train_never_has_is_refused(in_root):
    write_csv(in_root / "train.csv", [("good", "positive"), ("bad", "negative")])
    write_csv(in_root / "dev.csv", [("good", "positive"), ("fine", "neutral")])
    with pytest.raises(DataError, match=r"dev.csv: row 2: label 'neutral' never occurs in the train split"):
        read_user_splits(params(in_root, train="train.csv", dev="dev.csv"))


def test_malformed_files_name_their_line(tmp_path):
    d = tmp_path
    (d / "bad.jsonl").write_text('{"review": "a", "sentiment": "x"}\n{"review": "b", \n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: not valid JSON"):
        read_table(d / "bad.jsonl", Columns("review", "sentiment"), "single_label")
    (d / "bad.csv").write_text("review,sentiment\ngood,positive,extra\n")
    with pytest.raises(DataError, match=r"bad.csv: row 1: more fields than the header"):
        read_table(d / "bad.csv", Columns("review", "sentiment"), "single_label")
    (d / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"cannot tell the format from the suffix '.xlsx'"):
        read_table(d / "data.xlsx", Columns("review", "sentiment"), "single_label")


def test_params_refuse_a_named_task_without_data_and_a_metric_of_another_kind(in_root):
    with pytest.raises(ParamsError, match=r"key 'base.task': 'reviews' is not a GLUE preset"):
        parse_params({"base": {"task": "reviews"}})
    write_csv(in_root / "r.csv", REVIEWS)
    with pytest.raises(DataError, match=r"data.metric 'pearson' is not a single_label metric"):
        read_user_splits(params(in_root, train="r.csv", dev="r.csv", metric="pearson"))


def test_prepare_records_the_class_balance_and_the_dev_rows_train_also_has(in_root):
    from kdistill.data.splits import shared_rows
    from tasks.evaluate import data_md

    write_csv(in_root / "train.csv", REVIEWS)
    write_csv(in_root / "dev.csv", [("great phone, love it", "positive"), ("fresh text", "neutral")])
    task, train, dev = load_task_splits(params(in_root, train="train.csv", dev="dev.csv"))
    assert shared_rows(train, dev) == 1
    counts = label_counts(task, train["label"])
    assert counts == {"negative": 8, "neutral": 8, "positive": 8}
    text = "\n".join(data_md({"kind": task.kind, "train": len(train), "dev": len(dev), "train_dev_overlap": 1,
                              "label_counts": {"train": counts, "dev": label_counts(task, dev["label"])}}))
    assert "train: negative 8 (33.3%)" in text and "dev: negative 0 (0.0%), neutral 1 (50.0%)" in text
    assert "1 dev rows have the same text as a train row" in text
