"""general_distill.<recipe>.from: a general student someone already distilled, checked before any work."""

import pytest
from transformers import BertModel, MobileBertConfig

from kdistill.config import ParamsError, parse_params
from kdistill.general_start import check_start, load_start
from kdistill.validate import check_against_teacher, check_starts

from .conftest import tiny_config
from .families import save_teacher


def test_a_student_that_fits_is_accepted_and_loaded_as_saved(tmp_path, make_bert):
    teacher = make_bert("base", layers=4, hidden=24, heads=4, ffn=48).config
    saved = BertModel(tiny_config(layers=2, hidden=16, heads=4, ffn=32))
    saved.save_pretrained(tmp_path / "s")
    p = parse_params({"general_distill": {"tinybert": {"from": str(tmp_path / "s")}}})
    check_starts(p, teacher)
    assert p.model_dump(mode="json")["general_distill"]["tinybert"]["from"] == str(tmp_path / "s")  # round-trips
    loaded, own = load_start(str(tmp_path / "s"))
    assert own is None  # no tokenizer of its own: it takes the teacher's
    assert all((loaded.state_dict()[k] == v).all() for k, v in saved.state_dict().items())


def test_each_mismatch_is_refused_with_the_reason(make_bert):
    p = parse_params({})
    teacher = make_bert("base", layers=4, hidden=24, heads=4, ffn=48).config
    cases = [
        ("tinybert", tiny_config(layers=2, hidden=16, heads=4, vocab=99), "vocabulary has 99 tokens"),
        ("tinybert", tiny_config(layers=3, hidden=24, heads=4), "multiple of the student depth"),
        ("tinybert", tiny_config(layers=2, hidden=24, heads=3), "student has 3 heads, the teacher 4"),
        ("mobilebert", tiny_config(layers=4, hidden=24, heads=4), "needs a 'mobilebert' student"),
        ("mobilebert", MobileBertConfig(vocab_size=teacher.vocab_size, hidden_size=32, num_hidden_layers=4,
                                        num_attention_heads=4, intra_bottleneck_size=8, true_hidden_size=8,
                                        embedding_size=8), "block width 32 differs"),
    ]
    # MobileBERT's layer-wise transfer on the task data (params.yaml sets it) is what compares the block width
    p = parse_params({"task_distill": {"mobilebert": {"transfer": {"lr": 5e-4}}}})
    for recipe, cfg, message in cases:
        with pytest.raises(ValueError, match=message):  # GeneralStartError, or the layer map's own error
            check_start(recipe, cfg, teacher, p)


def test_validation_names_the_key_and_skips_the_shape_checks_a_given_student_makes_moot(tmp_path, make_bert):
    model, _ = save_teacher("roberta", tmp_path / "roberta")  # another family than the BERT teacher below
    model.save_pretrained(tmp_path / "roberta-no-tokenizer")
    p = parse_params({"general_distill": {"minilm": {"from": str(tmp_path / "roberta-no-tokenizer")}}})
    teacher = make_bert("base", layers=4, hidden=24, heads=4, ffn=48).config
    with pytest.raises(ParamsError, match=r"key 'general_distill.minilm.from': it is a 'roberta' model; the minilm "
                                          r"recipe needs a 'bert' student"):
        check_starts(p, teacher)
    with pytest.raises(ParamsError, match=r"general_distill.minilm.from': .*no-such-dir"):
        check_starts(parse_params({"general_distill": {"minilm": {"from": "./no-such-dir"}}}), teacher)
    # the default minilm student (192 wide, 12 relation heads) cannot be built from this teacher, but one given
    # with `from` is not built: only its own fit is checked
    wide = {"general_distill": {"tinybert": {"student": {"layers": 2, "hidden": 16, "heads": 4, "ffn": 32}},
                                "mobilebert": {"student": {"heads": 4, "embedding": 16}}}}
    with pytest.raises(ParamsError, match="general_distill.minilm"):
        check_against_teacher(parse_params(wide), 4, 4, 24, 48)
    check_against_teacher(parse_params({"general_distill": {**wide["general_distill"], "minilm": {"from": "x"}}}),
                          4, 4, 24, 48)


def test_a_student_with_its_own_tokenizer_learns_from_soft_labels_where_its_recipe_allows(tmp_path, make_bert):
    """Cross-vocabulary: a RoBERTa student with its own BPE tokenizer under a BERT teacher is accepted by the recipes
    whose task stage distils soft labels only, and refused, with the reason, by those that compare token by token."""
    save_teacher("roberta", tmp_path / "roberta")
    teacher = make_bert("base", layers=4, hidden=24, heads=4, ffn=48).config
    src = str(tmp_path / "roberta")
    for recipe in ("distilbert", "minilm"):
        check_starts(parse_params({"general_distill": {recipe: {"from": src}}}), teacher)
    with pytest.raises(ParamsError, match=r"general_distill.tinybert.from': it tokenizes with its own vocabulary "
                                          r"\(\d+ tokens; the teacher's has \d+\), and the tinybert recipe cannot "
                                          r"distil across vocabularies: .*position by position"):
        check_starts(parse_params({"general_distill": {"tinybert": {"from": src}}}), teacher)
    p = parse_params({"general_distill": {"mobilebert": {"from": src}},
                      "task_distill": {"mobilebert": {"transfer": {"lr": 5e-4}}}})
    with pytest.raises(ParamsError, match=r"task_distill.mobilebert.transfer"):
        check_starts(p, teacher)
    loaded, own = load_start(src, {"[PAD]": 0})
    assert own is not None and own.get_vocab() != {"[PAD]": 0} and loaded.config.model_type == "roberta"
