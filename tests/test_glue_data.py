import math

import pytest

from kdistill.data.glue import (
    DataError,
    check_split_available,
    get_task,
    glue_task,
    load_split,
    read_glue_tsv,
)

from .conftest import ROOT, SHARED_DATA

SHIPPED = ROOT / "data" / "glue"
COUNTS = {  # official GLUE (train, dev) row counts and label balances
    "sst2": (67349, 872, {0: 29780, 1: 37569}, {0: 428, 1: 444}),
    "cola": (8551, 1043, {0: 2528, 1: 6023}, {0: 322, 1: 721}),
    "mrpc": (3668, 408, {0: 1194, 1: 2474}, {0: 129, 1: 279}),
    "rte": (2490, 277, {0: 1249, 1: 1241}, {0: 146, 1: 131}),  # 0 = entailment
    "stsb": (5749, 1500, None, None),
}


@pytest.mark.parametrize("source", [SHARED_DATA, SHIPPED], ids=["shared", "shipped"])
@pytest.mark.parametrize("task", list(COUNTS))
def test_official_row_counts_and_label_balance(source, task):
    if not source.is_dir():
        pytest.skip(f"{source} not present")
    n_train, n_dev, bal_train, bal_dev = COUNTS[task]
    train, dev = load_split(source, task, "train"), load_split(source, task, "dev")
    assert (len(train), len(dev)) == (n_train, n_dev)
    spec = get_task(task)
    if spec.is_pair:
        assert "sentence2" in train.column_names
        assert all(s.strip() for s in train["sentence2"][:200])
        assert train["sentence1"][0] != train["sentence2"][0]
    if spec.is_regression:
        labels = train["label"]
        assert all(isinstance(x, float) for x in labels)
        assert 0.0 <= min(labels) and max(labels) <= 5.0
        assert sum(labels) / len(labels) == pytest.approx(2.701, abs=1e-3)
    else:
        for ds, bal in ((train, bal_train), (dev, bal_dev)):
            counts = {}
            for y in ds["label"]:
                counts[y] = counts.get(y, 0) + 1
            assert counts == bal


def test_shipped_data_equals_shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    for folder in ("SST-2", "CoLA", "MRPC", "RTE", "STS-B"):
        for split in ("train", "dev"):
            assert (SHIPPED / folder / f"{split}.tsv").read_bytes() == (SHARED_DATA / folder / f"{split}.tsv").read_bytes()


def test_quirks_bom_headerless_and_bare_quotes(tmp_path):
    mrpc = load_split(SHIPPED, "mrpc", "dev")
    assert mrpc["sentence1"][0].startswith("He said the foodservice")
    cola = load_split(SHIPPED, "cola", "train")
    assert cola["sentence1"][0] == "Our friends won't buy this analysis, let alone the next one we propose."
    # a row starting with a bare quote must not swallow the following rows
    d = tmp_path / "RTE"
    d.mkdir()
    (d / "dev.tsv").write_text('index\tsentence1\tsentence2\tlabel\n0\t"Quoted start\tb\tentailment\n1\tc\td\tnot_entailment\n')
    ds = load_split(tmp_path, "rte", "dev")
    assert ds["sentence1"] == ['"Quoted start', "c"] and ds["label"] == [0, 1]


def _write(tmp_path, content: bytes):
    d = tmp_path / "SST-2"
    d.mkdir(exist_ok=True)
    p = d / "train.tsv"
    p.write_bytes(content)
    return p


def test_malformed_row_names_file_and_line(tmp_path):
    p = _write(tmp_path, b"sentence\tlabel\ngood film\t1\nbad film\t0\textra\n")
    with pytest.raises(DataError, match=rf"{p}:3: expected 2 tab-separated columns, found 3"):
        load_split(tmp_path, "sst2", "train")


def test_empty_file_is_refused(tmp_path):
    p = _write(tmp_path, b"")
    with pytest.raises(DataError, match=rf"{p}: file is empty"):
        load_split(tmp_path, "sst2", "train")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"SST-2/train.tsv: file not found"):
        load_split(tmp_path, "sst2", "train")


def test_non_utf8_names_line(tmp_path):
    p = _write(tmp_path, b"sentence\tlabel\ngood\t1\ncaf\xe9 film\t0\n")
    with pytest.raises(DataError, match=rf"{p}:3: not valid UTF-8"):
        load_split(tmp_path, "sst2", "train")


def test_bad_label_names_line(tmp_path):
    p = _write(tmp_path, b"sentence\tlabel\ngood\t1\nbad\tpositive\n")
    with pytest.raises(DataError, match=rf"{p}:3: label 'positive' is not one of \['0', '1'\]"):
        read_glue_tsv(p, get_task("sst2"))


def test_missing_split_is_refused_before_work(tmp_path):
    with pytest.raises(DataError, match=r"task 'sst2' has no 'test' split: .*available splits: \['dev', 'train'\]"):
        check_split_available(SHIPPED, "sst2", "test")


def test_unknown_task():
    with pytest.raises(DataError, match="unknown task 'qqp'"):
        get_task("qqp")


def test_metrics_by_hand():
    m = glue_task("mrpc").metrics([1, 1, 0, 0], [1, 0, 0, 1])
    assert m["accuracy"] == 0.5 and m["f1"] == pytest.approx(0.5)
    m = glue_task("cola").metrics([1, 1, 0, 0], [1, 1, 0, 0])
    assert m["matthews_corr"] == pytest.approx(1.0)
    # tp=1 tn=1 fp=1 fn=1 -> (1 - 1)/... = 0
    assert glue_task("cola").metrics([1, 1, 0, 0], [1, 0, 0, 1])["matthews_corr"] == 0.0
    s = glue_task("stsb").metrics([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    assert s["spearman"] == pytest.approx(1.0) and 0.9 < s["pearson"] < 1.0
    assert s["pearson"] == pytest.approx(0.9933992677987828)
    assert not math.isnan(glue_task("stsb").metrics([1.0, 1.0], [1.0, 2.0])["pearson"])
