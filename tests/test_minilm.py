"""MiniLM-style distillation: the relation loss against a hand computation, and the recipe's checks."""

import math

import pytest
import torch
from transformers import AutoModel

from kdistill.config import ParamsError, parse_params
from kdistill.distill import losses as L
from kdistill.distill.objectives import Relations
from kdistill.models import tinybert_config
from kdistill.recipes import minilm
from kdistill.validate import check_against_teacher


def _relation_kl_by_hand(x_s, x_t, heads, mask):
    """Row by row, head by head, token by token, in float64: what MiniLMv2 defines."""
    total, count = 0.0, 0
    for b in range(x_s.size(0)):
        real = [i for i in range(x_s.size(1)) if mask[b, i]]
        for r in range(heads):
            def rel(x):
                d = x.size(-1) // heads
                v = x[b, :, r * d:(r + 1) * d].double()
                return {i: torch.softmax(torch.stack([v[i] @ v[j] / math.sqrt(d) for j in real]), 0) for i in real}
            rt, rs = rel(x_t), rel(x_s)
            for i in real:
                total += float((rt[i] * (rt[i].log() - rs[i].log())).sum())
                count += 1
    return total / count


def test_relation_kl_matches_a_hand_computation_with_padding_and_different_widths():
    torch.manual_seed(0)
    x_s, x_t = torch.randn(2, 5, 8), torch.randn(2, 5, 12)  # widths 8 and 12, 4 relation heads of width 2 and 3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = L.relation_kl(x_s, x_t, 4, mask)
    assert got.item() == pytest.approx(_relation_kl_by_hand(x_s, x_t, 4, mask), rel=1e-5)
    assert L.relation_kl(x_t, x_t, 4, mask).item() == pytest.approx(0.0, abs=1e-6)  # equal relations: no loss
    x_pad = x_s.clone()
    x_pad[1, 3:] = 1e3  # what sits at padded positions must not matter
    assert L.relation_kl(x_pad, x_t, 4, mask).item() == pytest.approx(got.item(), rel=1e-6)
    with pytest.raises(ValueError, match="relation heads must divide"):
        L.relation_kl(x_s, x_t, 5, mask)


def test_the_objective_compares_the_students_last_layer_with_the_chosen_teacher_layer(make_bert):
    """qq, kk and vv equal the relation KL of Q/K/V computed from the hidden states entering each layer."""
    teacher = make_bert("base", layers=3, hidden=24, heads=4, ffn=48, seed=1)
    student = AutoModel.from_config(tinybert_config(teacher.config, 2, 16, 4, 32)).eval()
    obj = Relations(student, teacher, {"qq": 1, "kk": 1, "vv": 1}, teacher_layer=2, heads=8)
    assert obj.teacher_layer == 2
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 8, 10, 3, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        got = obj(batch)
        h_t = teacher(**batch, output_hidden_states=True).hidden_states[1]  # what enters teacher layer 2
        h_s = student(**batch, output_hidden_states=True).hidden_states[1]  # what enters student layer 2 (its last)
    for k in ("query", "key", "value"):
        t_lin = getattr(teacher.encoder.layer[1].attention.self, k)
        s_lin = getattr(student.encoder.layer[1].attention.self, k)
        with torch.no_grad():
            want = _relation_kl_by_hand(s_lin(h_s), t_lin(h_t), 8, batch["attention_mask"])
        assert got[k[0] * 2].item() == pytest.approx(want, rel=1e-4)
    last = Relations(student, teacher, {"qq": 1}, teacher_layer=-1, heads=8)
    assert last.teacher_layer == 3 and set(last(batch)) == {"qq"}


def test_params_checks_name_the_key_and_the_fix():
    p = parse_params({"general_distill": {"minilm": {"relation_heads": 7}}})
    with pytest.raises(ParamsError, match=r"general_distill.minilm.relation_heads': 7 does not divide the teacher"):
        check_against_teacher(p, 6, 12, 384, 1536)
    p = parse_params({"general_distill": {"minilm": {"teacher_layer": 7}}})
    with pytest.raises(ParamsError, match=r"general_distill.minilm.teacher_layer': 7 is not a teacher layer \(1..6"):
        check_against_teacher(p, 6, 12, 384, 1536)
    p = parse_params({"general_distill": {"minilm": {"teacher_layer": 2}}})
    with pytest.raises(ParamsError, match=r"minilm.student.layers': a teacher-initialised student of 3 layers"):
        check_against_teacher(p, 6, 12, 384, 1536)
    assert minilm.spread_layers(3, 6) == [2, 4, 6] and minilm.spread_layers(2, 5) == [2, 5]
    check_against_teacher(parse_params({}), 6, 12, 384, 1536)  # the defaults fit the default teacher
