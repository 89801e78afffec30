import pytest
import yaml

from kdistill.config import ParamsError, load_params, parse_params

from .conftest import ROOT


def test_project_params_file_is_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.base.task == "sst2"
    assert p.general_distill.tinybert.student.hidden % p.general_distill.tinybert.student.heads == 0


def test_unknown_key_names_it_and_the_nearest_valid_key():
    with pytest.raises(ParamsError, match=r"unknown key 'teacher_finetune.optim.learning_rat'.*did you mean 'teacher_finetune.optim.lr'|unknown key 'teacher_finetune.optim.learning_rat'"):
        parse_params({"teacher_finetune": {"optim": {"learning_rat": 1e-4}}})
    with pytest.raises(ParamsError, match=r"unknown key 'base.teachr'; did you mean 'base.teacher'\?"):
        parse_params({"base": {"teachr": "x"}})
    with pytest.raises(ParamsError, match=r"unknown key 'augmnt'; did you mean 'augment'\?"):
        parse_params({"augmnt": {}})


def test_wrong_type_and_range_name_the_full_path():
    with pytest.raises(ParamsError, match=r"key 'task_distill.distilbert.optim.batch_size': Input should be a valid integer"):
        parse_params({"task_distill": {"distilbert": {"optim": {"batch_size": "many"}}}})
    with pytest.raises(ParamsError, match=r"key 'augment.aug_p': Input should be less than or equal to 1"):
        parse_params({"augment": {"aug_p": 1.5}})
    with pytest.raises(ParamsError, match=r"key 'base.task': 'qqp' is not a GLUE preset \(sst2, cola, mrpc, rte, stsb\) and data.train names no file"):
        parse_params({"base": {"task": "qqp"}})
    with pytest.raises(ParamsError, match=r"key 'general_distill.tinybert.student.activation': Input should be 'teacher', 'gelu' or 'relu'"):
        parse_params({"general_distill": {"tinybert": {"student": {"activation": "swish"}}}})


def test_heads_must_divide_hidden():
    with pytest.raises(ParamsError, match=r"key 'general_distill.tinybert.student': heads \(5\) must divide hidden \(192\)"):
        parse_params({"general_distill": {"tinybert": {"student": {"hidden": 192, "heads": 5}}}})


def test_layer_map_must_fit_the_teacher():
    p = parse_params({"general_distill": {"tinybert": {"student": {"layers": 4}}}})
    from kdistill.validate import check_against_teacher

    with pytest.raises(ParamsError, match=r"general_distill.tinybert.layer_map': .*multiple of the student depth"):
        check_against_teacher(p, teacher_layers=6, teacher_heads=12, teacher_hidden=384)
    p = parse_params({"general_distill": {"tinybert": {"student": {"layers": 3, "hidden": 192, "heads": 4, "init": "random"}}}})
    check_against_teacher(p, teacher_layers=6, teacher_heads=12, teacher_hidden=384)  # 4 divides 12: heads grouped
    p = parse_params({"general_distill": {"tinybert": {"student": {"layers": 3, "hidden": 160, "heads": 5}}}})
    with pytest.raises(ParamsError, match=r"general_distill.tinybert.student.heads': .*student has 5 heads, the teacher 12"):
        check_against_teacher(p, teacher_layers=6, teacher_heads=12, teacher_hidden=384)
    p = parse_params({"general_distill": {"mobilebert": {"student": {"bottleneck": 100, "heads": 5}}}})
    with pytest.raises(ParamsError, match=r"general_distill.mobilebert.student.heads': .*student has 5 heads, the teacher 12"):
        check_against_teacher(p, teacher_layers=6, teacher_heads=12, teacher_hidden=384)
    p = parse_params({"general_distill": {"distilbert": {"init_layers": [0, 2, 9]}}})
    with pytest.raises(ParamsError, match=r"general_distill.distilbert.init_layers': .*0..5"):
        check_against_teacher(p, teacher_layers=6, teacher_heads=12, teacher_hidden=384)


def test_missing_split_is_refused(tmp_path):
    from kdistill.validate import check_data

    p = parse_params({"base": {"eval_split": "test", "data_dir": str(ROOT / "data" / "glue")}})
    with pytest.raises(ParamsError, match=r"base.eval_split': task 'sst2' has no 'test' split"):
        check_data(p, ROOT)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(ParamsError, match=rf"{bad}: not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="parameters file not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_merge_deeply(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"base": {"seed": 1, "max_seq_len": 32}}))
    p = load_params(f, overrides={"base": {"seed": 7}})
    assert (p.base.seed, p.base.max_seq_len) == (7, 32)


def test_profile_extends_a_params_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"base": {"seed": 3, "max_seq_len": 48}, "augment": {"copies": 4}}))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"extends": "base.yaml", "base": {"task": "mrpc"}}))
    p = load_params(tmp_path / "p.yaml")
    assert (p.base.task, p.base.seed, p.base.max_seq_len, p.augment.copies) == ("mrpc", 3, 48, 4)
    # an empty mapping replaces the one it extends: `variants: {}` is no variant, not the base's variants kept
    (tmp_path / "none.yaml").write_text(yaml.safe_dump({"extends": str(ROOT / "params.yaml"),
                                                        "studies": {"seeds": {"variants": {}}}}))
    assert load_params(ROOT / "params.yaml").studies.seeds.variants
    assert load_params(tmp_path / "none.yaml").studies.seeds.variants == {}
    assert load_params(ROOT / "profiles" / "ner.yaml").studies.seeds.recipes == ["tinybert"]
    # a profile's own variants replace the base's (its levers, not the default task's)
    ner = load_params(ROOT / "profiles" / "ner.yaml").studies.seeds.variants
    assert set(ner) == {"pred-lr-5e-4", "temperature-2"}
    assert ner["temperature-2"].change == {"task_distill": {"tinybert": {"temperature": 2.0}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"extends": "base.yaml", "base": {"tsk": "mrpc"}}))
    with pytest.raises(ParamsError, match=r"bad.yaml: unknown key 'base.tsk'; did you mean 'base.task'\?"):
        load_params(tmp_path / "bad.yaml")


def test_a_seeds_variant_names_its_recipes_and_leaves_the_seed_to_the_study():
    ok = parse_params({"studies": {"seeds": {"variants": {"init-random": {
        "recipes": ["tinybert"], "change": {"general_distill": {"tinybert": {"student": {"init": "random"}}}}}}}}})
    assert ok.studies.seeds.variants["init-random"].recipes == ["tinybert"]
    assert parse_params({}).studies.seeds.variants == {}
    with pytest.raises(ParamsError, match=r"key 'studies.seeds.variants.x.change': base.seed is what the study varies"):
        parse_params({"studies": {"seeds": {"variants": {"x": {"recipes": ["tinybert"],
                                                                "change": {"base": {"seed": 7}}}}}}})
    with pytest.raises(ParamsError, match=r"unknown recipe\(s\) \['tiny'\]"):
        parse_params({"studies": {"seeds": {"variants": {"x": {"recipes": ["tiny"], "change": {"a": 1}}}}}})
    with pytest.raises(ParamsError, match=r"variant name 'seed7'"):
        parse_params({"studies": {"seeds": {"variants": {"seed7": {"recipes": ["tinybert"], "change": {"a": 1}}}}}})
