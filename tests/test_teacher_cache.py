"""The teacher cache for intermediate layers: same losses as running the teacher, never stale, skipped with a reason."""

import pytest
import torch
from datasets import Dataset
from transformers import BertModel

from kdistill.distill.objectives import FeatureTransfer, Intermediate
from kdistill.distill.teacher_cache import (
    FeatureSpec,
    build_teacher_features,
    features_for,
)
from kdistill.models import tinybert_config
from kdistill.train.trainer import TrainerConfig, pad_collate

# fp16 keeps 11 significant bits: a relative error of at most 2^-11 per stored value. The losses are means of
# squared differences of O(1) values, so stored-vs-live teacher values move a loss by well under 1e-3 relative;
# 2e-3 relative (plus 1e-4 absolute for losses near zero) is that bound with room for the sum order.
RTOL, ATOL = 2e-3, 1e-4


def rows(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = []
    for i in range(n):
        length = 3 + int(torch.randint(0, 8, (1,), generator=g))
        ids.append([2] + torch.randint(5, 30, (length - 2,), generator=g).tolist() + [3])
    return Dataset.from_dict({"input_ids": ids, "labels": [i % 2 for i in range(n)], "row": list(range(n))})


def batch_of(ds, idx):
    return pad_collate([ds[i] for i in idx])


def intermediate(make_bert, attention="scores"):
    teacher = make_bert("seq", layers=4, hidden=24, heads=4)
    torch.manual_seed(1)
    student = BertModel(tinybert_config(teacher.config, 2, 16, 4, 32))
    return Intermediate(student, teacher, {"emb": 1.0, "hidn": 1.0, "attn": 1.0}, "uniform", attention).eval()


@pytest.mark.parametrize("attention", ["scores", "probs"])
def test_losses_with_and_without_the_cache_agree(make_bert, tmp_path, attention):
    ds = rows()
    obj = intermediate(make_bert, attention)
    spec = obj.feature_spec()
    assert spec == FeatureSpec((0, 2, 4), (2, 4), probs=attention == "probs")  # a probability loss reads stored probs
    feats = build_teacher_features(obj.teacher, ds, pad_collate, spec, tmp_path, budget_gb=1.0)
    assert feats is not None
    if attention == "probs":  # each real query's stored distribution sums to one over the real keys
        b = batch_of(ds, [0, 5, 7])
        _, maps = feats.lookup(b["row"], b["attention_mask"])
        sums = maps[1].sum(-1)[b["attention_mask"][:, None, :].expand(-1, maps[1].size(1), -1).bool()]
        assert torch.allclose(sums, torch.ones_like(sums), atol=2e-3)
    for idx in ([0, 5, 7], [11, 2, 3, 4]):  # batches with padding of different lengths
        b = batch_of(ds, idx)
        obj.teacher_features = None
        live = obj(b)
        obj.teacher_features = feats
        cached = obj(b)
        for k in live:
            assert torch.allclose(cached[k], live[k], rtol=RTOL, atol=ATOL), (k, cached[k], live[k])
    # MobileBERT's layer-wise transfer reads the same kind of cache
    teacher = obj.teacher
    student = make_bert("base", layers=4, hidden=24, heads=4, seed=3)
    ft = FeatureTransfer(student, teacher, [1, 2, 3, 4], [1, 2, 3, 4], {"fmt": 1.0, "at": 1.0}).eval()
    ft.teacher_features = build_teacher_features(teacher, ds, pad_collate, ft.feature_spec(), tmp_path, 1.0)
    b = batch_of(ds, [1, 6, 9])
    cached = ft(b)
    ft.teacher_features = None
    live = ft(b)
    for k in live:
        assert torch.allclose(cached[k], live[k], rtol=RTOL, atol=ATOL), (k, cached[k], live[k])


def test_a_changed_teacher_or_row_set_never_reads_a_stale_cache(make_bert, tmp_path):
    ds = rows()
    obj = intermediate(make_bert)
    spec = obj.feature_spec()
    first = build_teacher_features(obj.teacher, ds, pad_collate, spec, tmp_path, 1.0)
    again = build_teacher_features(obj.teacher, ds, pad_collate, spec, tmp_path, 1.0)
    assert again.path == first.path  # same content: reused
    with torch.no_grad():
        obj.teacher.bert.encoder.layer[0].attention.self.query.weight.add_(0.5)
    changed = build_teacher_features(obj.teacher, ds, pad_collate, spec, tmp_path, 1.0)
    assert changed.path != first.path
    b = batch_of(ds, [0, 1, 2])
    obj.teacher_features = None
    live = obj(b)
    obj.teacher_features = changed
    assert torch.allclose(obj(b)["attn"], live["attn"], rtol=RTOL, atol=ATOL)  # the changed teacher's outputs
    other = rows(seed=5)
    assert build_teacher_features(obj.teacher, other, pad_collate, spec, tmp_path, 1.0).path not in (first.path, changed.path)
    assert not list(tmp_path.glob(".*tmp-*"))  # every build renamed into place, nothing half-written


def test_cache_is_skipped_with_a_reason(make_bert, tmp_path, capsys):
    ds = rows()
    obj = intermediate(make_bert)
    two = TrainerConfig(epochs=2.0, batch_size=4)
    assert features_for(obj, obj.teacher, ds, pad_collate, TrainerConfig(epochs=1.0), tmp_path, 1.0) is None
    assert "at most once" in capsys.readouterr().out
    assert features_for(obj, obj.teacher, ds, pad_collate, two, tmp_path, 1e-9) is None
    assert "budget" in capsys.readouterr().out
    assert features_for(obj, obj.teacher, ds, pad_collate, two, tmp_path, 0.0) is None
    obj.mask_padding = False
    assert features_for(obj, obj.teacher, ds, pad_collate, two, tmp_path, 1.0) is None
    assert "padded positions" in capsys.readouterr().out
    obj.mask_padding = True
    assert features_for(obj, obj.teacher, ds, pad_collate, two, tmp_path, 1.0) is not None
