"""A student started from its teacher's weights: which units it keeps, and that nothing is lost when it keeps all."""

import pytest
import torch
from transformers import AutoModel

from kdistill.families import ffn_size
from kdistill.models import tinybert_config
from kdistill.student_init import StudentInitError, evenly, init_from_teacher

from .families import FAMILIES, SENTENCES, save_teacher


def test_evenly_keeps_the_ends_and_spreads_the_rest():
    assert evenly(12, 4).tolist() == [0, 4, 7, 11]
    assert evenly(6, 6).tolist() == list(range(6))
    with pytest.raises(StudentInitError, match="cannot keep 7 of 6"):
        evenly(6, 7)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_full_width_student_of_the_mapped_layers_is_the_teacher_itself(family, tmp_path):
    """Keeping every unit of layers [1, 2] of a 2-layer teacher must reproduce the teacher's hidden states exactly:
    any unit taken from the wrong place, or any tensor left random, changes them."""
    model, tok = save_teacher(family, tmp_path / family)
    teacher = model.base_model.eval()
    c = teacher.config
    student = AutoModel.from_config(tinybert_config(c, 2, c.hidden_size, c.num_attention_heads, ffn_size(c))).eval()
    info = init_from_teacher(student, teacher, [1, 2])
    kept = {n: q for n, q in student.named_parameters() if n not in info["left_random"]}
    assert all(n.startswith("pooler.") for n in info["left_random"])  # RoBERTa classifiers carry no pooler
    assert info["copied_parameters"] == sum(q.numel() for q in kept.values())
    batch = tok(SENTENCES[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = teacher(**batch, output_hidden_states=True).hidden_states
        got = student(**batch, output_hidden_states=True).hidden_states
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w)


def test_a_narrow_shallow_student_takes_the_mapped_layer_and_the_evenly_spaced_units(make_bert):
    teacher = make_bert("base", layers=4, hidden=24, heads=4, ffn=48)  # head width 6
    student = AutoModel.from_config(tinybert_config(teacher.config, 2, 8, 2, 16))  # 2 heads of width 4
    init_from_teacher(student, teacher, [2, 4])
    hid, ffn = evenly(24, 8), evenly(48, 16)
    attn = torch.tensor([h * 6 + d for h in evenly(4, 2).tolist() for d in evenly(6, 4).tolist()])
    t, s = teacher.encoder.layer[3], student.encoder.layer[1]  # student layer 2 <- teacher layer 4
    torch.testing.assert_close(s.attention.self.query.weight, t.attention.self.query.weight[attn][:, hid])
    torch.testing.assert_close(s.attention.self.value.bias, t.attention.self.value.bias[attn])
    torch.testing.assert_close(s.attention.output.dense.weight, t.attention.output.dense.weight[hid][:, attn])
    torch.testing.assert_close(s.intermediate.dense.weight, t.intermediate.dense.weight[ffn][:, hid])
    torch.testing.assert_close(s.output.dense.weight, t.output.dense.weight[hid][:, ffn])
    torch.testing.assert_close(s.output.LayerNorm.weight, t.output.LayerNorm.weight[hid])
    torch.testing.assert_close(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight[:, hid])


def test_a_student_wider_than_its_teacher_on_any_axis_is_refused(make_bert):
    teacher = make_bert("base", layers=2, hidden=24, heads=4, ffn=48)
    for shape, word in (((3, 24, 4, 48), "layers"), ((2, 32, 4, 48), "hidden size"), ((2, 24, 4, 64), "FFN size"),
                        ((2, 24, 8, 48), "attention heads"), ((2, 16, 2, 48), "head width")):
        student = AutoModel.from_config(tinybert_config(teacher.config, *shape))
        with pytest.raises(StudentInitError, match=word):
            init_from_teacher(student, teacher, list(range(1, shape[0] + 1)) if shape[0] <= 2 else [1, 2, 2])


def test_params_refuse_a_teacher_init_wider_than_the_teacher_before_any_work():
    from kdistill.config import ParamsError, load_params
    from kdistill.validate import check_against_teacher

    p = load_params(overrides={"general_distill": {"tinybert": {"student": {"hidden": 768, "heads": 12, "ffn": 768}}}})
    with pytest.raises(ParamsError, match=r"general_distill.tinybert.student.*hidden size: the student's 768 exceeds"):
        check_against_teacher(p, 6, 12, 384, 1536)
    with pytest.raises(ParamsError, match="keeps the teacher's FFN activation"):
        load_params(overrides={"general_distill": {"tinybert": {"student": {"activation": "relu"}}}})
    p = load_params(overrides={"general_distill": {"tinybert": {"student": {"hidden": 768, "heads": 12,
                                                                             "init": "random"}}}})
    check_against_teacher(p, 6, 12, 384, 1536)  # a random student may be any width


def test_params_refuse_a_teacher_init_control_whose_random_student_is_wider_than_the_teacher():
    """A random-init student may be any width, but its teacher-initialised control copies the teacher's weights into
    the same shape, so naming it in task_distill.teacher_init_controls brings the width check back."""
    from kdistill.config import ParamsError, load_params
    from kdistill.validate import check_against_teacher

    wide = {"general_distill": {"tinybert": {"student": {"hidden": 768, "heads": 12, "init": "random"}}}}
    check_against_teacher(load_params(overrides=wide), 6, 12, 384, 1536)
    p = load_params(overrides={**wide, "task_distill": {"teacher_init_controls": ["tinybert"]}})
    with pytest.raises(ParamsError, match=r"general_distill.tinybert.student.*hidden size.*teacher_init_controls "
                                          r"builds the tinybert student from the teacher's weights"):
        check_against_teacher(p, 6, 12, 384, 1536)


@pytest.mark.parametrize("recipe", ["tinybert", "distilbert", "mobilebert", "minilm"])
def test_the_teacher_initialised_control_starts_where_the_general_stage_starts(recipe, tmp_path):
    """tasks.task_distill init-<recipe>: the start is the recipe's general student before its first step (the
    same tensors, built the same way), with the teacher's weights even where the recipe's own init is random."""
    import shutil

    from safetensors.torch import load_file

    from kdistill.config import load_params
    from kdistill.paths import Paths
    from kdistill.recipes.baseline import teacher_initialised
    from tasks.general_distill import general_plan
    from tasks.task_distill import teacher_init_start

    from .test_refusals import _student_shapes
    from .conftest import ROOT

    teacher, _ = save_teacher("bert", tmp_path / "teacher", "mlm")
    paths = Paths(tmp_path / "outputs")
    shutil.copytree(tmp_path / "teacher", paths.teacher_mlm)
    import yaml

    shapes = _student_shapes(yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text()))
    for r in ("tinybert", "minilm"):
        shapes[r]["student"]["init"] = "random"
    p = load_params(ROOT / "profiles" / "smoke.yaml",
                    overrides={"base": {"teacher": str(tmp_path / "teacher")}, "general_distill": shapes,
                               "task_distill": {"teacher_init_controls": [recipe]}})
    start = teacher_init_start(p, paths, recipe)
    got = load_file(str(start / "model.safetensors"))
    torch.manual_seed(p.base.seed)
    want = general_plan(teacher_initialised(p, recipe), paths, recipe)[0].student.state_dict()
    assert set(got) <= set(want) and len(got) > len(want) // 2  # tied tensors (the MLM decoder) are saved once
    for name in got:
        torch.testing.assert_close(got[name], want[name], msg=name)
    if recipe in ("tinybert", "minilm"):  # the control copied the teacher where the recipe starts at random
        words = got["embeddings.word_embeddings.weight"]
        table = teacher.bert.embeddings.word_embeddings.weight.detach()
        assert all(any(torch.equal(col, t) for t in table.T) for col in words.T)
        torch.manual_seed(p.base.seed)
        random = general_plan(p, paths, recipe)[0].student.state_dict()
        assert not torch.equal(random["embeddings.word_embeddings.weight"], words)
