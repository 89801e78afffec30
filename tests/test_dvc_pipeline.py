"""dvc.yaml and the params files agree: DVC refuses to record a stage whose listed params key is missing."""

import pytest
import yaml

from kdistill.config import ParamsError, load_params
from kdistill.paths import Paths
from pipelines.stage_graph import _profile_stage, load_stages

from .conftest import ROOT


def _has(tree: dict, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _listed_params():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        for stage in repo.stage.collect(str(ROOT / "dvc.yaml")):
            for dep in stage.deps:  # the params file's keys (runtime.yaml: the machine's record, tested apart)
                if type(dep).__name__ == "ParamsDependency" and not str(dep.def_path).endswith("runtime.yaml"):
                    yield stage.name, list(dep.params)


def test_every_params_key_dvc_yaml_lists_is_in_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = [(stage, key) for stage, keys in _listed_params() for key in keys if not _has(params, key)]
    assert not missing, f"params.yaml lacks keys that dvc.yaml stages list (dvc commit would fail): {missing}"


@pytest.mark.parametrize("profile", sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")))
def test_every_profile_resolves_to_a_complete_params_file(profile):
    resolved = load_params(ROOT / "profiles" / f"{profile}.yaml").model_dump(mode="json")
    missing = [(stage, key) for stage, keys in _listed_params() for key in keys if not _has(resolved, key)]
    assert not missing


def test_no_stage_depends_on_knobs_that_change_no_result():
    listed = {key for _, keys in _listed_params() for key in keys}
    assert not listed & {"base", "base.threads", "base.max_parallel"}


def test_every_stage_that_computes_in_a_precision_records_what_it_resolved_to(tmp_path):
    """DVC sees the precision a stage really used: a bf16 result is stale on a machine where the same params mean fp32."""
    from dvc.repo import Repo

    from kdistill.train import precision
    from pipelines.stage_graph import precision_record

    with Repo(str(ROOT)) as repo:
        reads = {s.name for s in repo.stage.collect(str(ROOT / "dvc.yaml")) for d in s.deps
                 if type(d).__name__ == "ParamsDependency" and str(d.def_path).endswith("runtime.yaml")}
    assert reads == set(load_stages(ROOT / "dvc.yaml")) - {"prepare", "augment"}
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    try:
        precision.set_bf16_probe(lambda device: False)
        fp32 = precision_record(tmp_path / "params.yaml")["precision"]
        precision.set_bf16_probe(lambda device: True)
        bf16 = precision_record(tmp_path / "params.yaml")["precision"]
    finally:
        precision.set_bf16_probe(None)
    assert fp32["base.precision"] == "fp32" and bf16["base.precision"] == "bf16" and fp32 != bf16
    assert fp32["evaluate.precision"] == "fp32"  # null: the base precision, resolved


def test_profile_stages_move_outputs_and_read_the_profile_params():
    body = {"cmd": "${py} -m tasks.task_distill ${item}", "deps": ["tasks/task_distill.py", "outputs/teacher"],
            "params": ["base.seed", "task_distill.${item}"], "outs": ["outputs/students/${item}"],
            "plots": [{"reports/losses/task_distill_${item}.csv": {"x": "step"}}]}
    got = _profile_stage({**body, "params": [*body["params"], {"runtime.yaml": ["precision"]}]}, "task_distill",
                         "runs/smoke/params.yaml", "outputs-smoke")
    assert got["wdir"] == "../.."
    assert got["cmd"].startswith("KDISTILL_PARAMS=runs/smoke/params.yaml KDISTILL_OUTPUTS=outputs-smoke ")
    assert got["deps"] == ["tasks/task_distill.py", "outputs-smoke/teacher"]
    assert got["outs"] == ["outputs-smoke/students/${item}"]
    assert got["plots"] == [{"outputs-smoke/reports/losses/task_distill_${item}.csv": {"x": "step"}}]
    assert got["params"] == [{"runs/smoke/params.yaml": ["base.seed", "task_distill.${item}"]},
                             {"runs/smoke/runtime.yaml": ["precision"]}]


def test_the_flow_schedules_every_stage_of_dvc_yaml():
    from kdistill.recipes import RECIPES

    stages = load_stages(ROOT / "dvc.yaml")
    assert len(stages) == 6 + 3 * len(RECIPES)
    # evaluate reads the folders that hold every student and baseline
    assert stages["evaluate"].upstream >= {"teacher_finetune"} | {f"{s}@{r}" for s in ("task_distill", "baseline")
                                                                   for r in RECIPES}
    # never waits for the teacher; reads prepare's validation rows and dev split
    assert stages["baseline@tinybert"].upstream == {"general_distill@tinybert", "augment", "prepare"}
    assert stages["prepare"].upstream == set()
    # export reads evaluate's summary and every student: it runs last
    assert stages["export"].upstream >= {"evaluate", "teacher_finetune"} | {f"task_distill@{r}" for r in RECIPES}
    assert not stages["export"].downstream


def test_committed_smoke_pipeline_is_what_generation_writes(tmp_path, monkeypatch):
    """runs/smoke/ is versioned like dvc.lock; its generated dvc.yaml and params.yaml must follow dvc.yaml."""
    import pipelines.stage_graph as sg

    committed = {f: (ROOT / "runs" / "smoke" / f).read_text() for f in ("dvc.yaml", "params.yaml")}
    monkeypatch.setattr(sg, "RUNS", tmp_path)
    sg.profile_pipeline("smoke")
    for f, text in committed.items():
        assert (tmp_path / "smoke" / f).read_text() == text, f"runs/smoke/{f} is stale: run `make smoke` and commit it"


def test_dvc_yaml_iterates_over_exactly_the_recipe_modules():
    """A recipe is a module in kdistill/recipes; dvc.yaml's per-recipe stages iterate over params.yaml's
    base.recipes, which names every one of them."""
    from kdistill import recipes

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {s["foreach"] for s in stages.values() if "foreach" in s} == {"${base.recipes}"}
    p = load_params(ROOT / "params.yaml")
    assert p.base.recipes == list(recipes.RECIPES)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    smoke = yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())
    for name, mod in recipes.RECIPES.items():
        assert callable(mod.general) and callable(mod.task) and isinstance(mod.NEEDS_TEACHER_MLM, bool)
        assert callable(mod.check_teacher)
        # the recipe's own params sections are what the params file holds for it
        assert isinstance(getattr(p.general_distill, name), mod.GeneralParams)
        assert isinstance(getattr(p.task_distill, name), mod.TaskParams)
        assert name in raw["general_distill"] and name in raw["task_distill"], f"params.yaml lacks {name}'s sections"
        # the smoke profile keeps every recipe to a few steps
        assert name in smoke["general_distill"] and name in smoke["task_distill"], f"profiles/smoke.yaml: {name}"
    assert set(p.general_distill.model_fields) == set(recipes.RECIPES)
    assert set(p.task_distill.model_fields) == set(recipes.RECIPES) | {"baseline", "teacher_init_controls"}


def test_reference_stage_times_name_exactly_the_default_stages():
    """Shipped times order a fresh clone's first run (longest chains first); they must follow dvc.yaml."""
    import json

    ref = json.loads((ROOT / "pipelines" / "stage_seconds.reference.json").read_text())
    assert set(ref) == set(load_stages(ROOT / "dvc.yaml"))
    assert all(v > 0 for v in ref.values())


def _generated(run_dir, machine_free=True):
    """A study's generated files. machine_free: every yaml but the runtime records, which hold what `auto` precision
    resolved to where they were written (fp32 on AVX2, bf16 with AVX512-BF16/AMX) and are committed with the dvc.lock
    they match (test_every_stage_that_computes_in_a_precision_records_what_it_resolved_to covers both branches)."""
    return {f: f.read_text() for f in run_dir.rglob("*.yaml") if not (machine_free and f.name == "runtime.yaml")}


@pytest.fixture(params=[False, True], ids=["fp32-cpu", "native-bf16-cpu"])
def either_cpu(request):
    """Both kinds of CPU this project runs on, forced: `auto` precision resolves to fp32 (AVX2 only) or bf16
    (AVX512-BF16/AMX), whichever machine runs the test. The project's runtime records, which a study rewrites under
    the forced probe (the default pipeline's and its cells'), are put back: they record what this machine's dvc.lock
    files hold."""
    from kdistill.train import precision

    records = [ROOT / "runtime.yaml", *(ROOT / "runs").rglob("runtime.yaml")]
    before = {f: f.read_text() for f in records if f.is_file()}
    precision.set_bf16_probe(lambda device: request.param)
    try:
        yield request.param
    finally:
        precision.set_bf16_probe(None)
        for f in records:
            if f in before:
                f.write_text(before[f])
            else:
                f.unlink(missing_ok=True)


def test_a_study_is_a_dvc_pipeline_of_cells_reading_the_pipeline_outputs(either_cpu):
    """make ablation: one cell per augmentation method, each its own augment and task stages writing under
    outputs-ablation/<cell>/ and reading the pipeline's teacher and general students; the cell equal to params.yaml
    (none) is the pipeline's own run. The generated files are committed, like runs/smoke/."""
    from pipelines.study import needed_pipeline_stages, study_pipeline

    run_dir = ROOT / "runs" / "ablation"
    committed, before = _generated(run_dir), _generated(run_dir, machine_free=False)
    try:
        dvc_file, cells = study_pipeline("default", "ablation")
        assert _generated(run_dir) == committed, \
            "runs/ablation is stale: run `python -c \"from pipelines.study import study_pipeline as s; " \
            "s('default', 'ablation'); s('default', 'seeds')\"` and commit it"
    finally:
        for f, text in before.items():
            f.write_text(text)
    assert [(c.name, c.shared) for c in cells] == [("none", True), ("wordnet", False), ("tinybert", False)]
    stages = load_stages(dvc_file)
    assert set(stages) == {f"{s}-{c}" for c in ("wordnet", "tinybert") for s in ("augment",)} | {
        f"task_distill-{c}-{r}" for c in ("wordnet", "tinybert") for r in ("tinybert", "distilbert")}
    td = stages["task_distill-tinybert-distilbert"]
    assert {ROOT / "outputs" / "teacher", ROOT / "outputs" / "general" / "distilbert",
            ROOT / "outputs-ablation" / "tinybert" / "augmented"} <= set(td.deps)
    assert td.outs[0] == ROOT / "outputs-ablation" / "tinybert" / "students" / "distilbert"  # then its loss CSV
    assert td.upstream == {"augment-tinybert"}
    assert ROOT / "outputs" / "teacher_mlm" in stages["augment-tinybert"].deps
    cell = yaml.safe_load((run_dir / "tinybert" / "params.yaml").read_text())
    assert cell["augment"]["method"] == "tinybert" and cell["tracking"]["register_models"] is False
    assert needed_pipeline_stages(cells) == {"prepare", "teacher_finetune", "teacher_mlm", "general_distill@tinybert",
                                             "general_distill@distilbert", "augment", "task_distill@tinybert",
                                             "task_distill@distilbert"}


def test_a_seeds_variant_measures_a_lever_over_the_same_seeds(either_cpu):
    """studies.seeds.variants: init-random gets general students of its own (one stage per recipe, at the pipeline's
    seed, in outputs-seeds/init-random) that its seed cells' task stages read; checkpoint-best changes only the task
    stages, which read the pipeline's general students. Neither has baselines, and the seed cells of the pipeline's
    params are as they were (their stages untouched, so DVC keeps them up to date)."""
    from pipelines.study import needed_pipeline_stages, study_pipeline

    run_dir = ROOT / "runs" / "seeds"
    committed, before = _generated(run_dir), _generated(run_dir, machine_free=False)
    try:
        dvc_file, cells = study_pipeline("default", "seeds")
        assert _generated(run_dir) == committed, "runs/seeds is stale: regenerate it"
    finally:
        for f, text in before.items():
            f.write_text(text)
    by_name = {c.name: c for c in cells}
    assert by_name["init-random-seed43"].general == "init-random" and by_name["checkpoint-best-seed43"].general is None
    assert not any(c.baselines for c in cells if c.variant)
    stages = load_stages(dvc_file)
    gen = stages["general_distill-init-random-tinybert"]
    assert gen.outs[0] == ROOT / "outputs-seeds" / "init-random" / "general" / "tinybert"
    assert "KDISTILL_GENERAL_OUTPUTS=outputs-seeds/init-random " in gen.cmd
    task = stages["task_distill-init-random-seed44-tinybert"]
    assert ROOT / "outputs-seeds" / "init-random" / "general" / "tinybert" in task.deps
    assert ROOT / "outputs" / "general" / "tinybert" not in task.deps
    assert task.upstream == {"augment-init-random-seed44", "general_distill-init-random-tinybert"}
    best = stages["task_distill-checkpoint-best-seed42-minilm"]
    assert ROOT / "outputs" / "general" / "minilm" in best.deps and "KDISTILL_GENERAL_OUTPUTS" not in best.cmd
    assert not any(n.startswith("general_distill-checkpoint-best") or n.startswith("baseline-init") for n in stages)
    g = yaml.safe_load((run_dir / "init-random" / "params.yaml").read_text())
    assert g["general_distill"]["tinybert"]["student"]["init"] == "random" and g["base"]["seed"] == 42
    c = yaml.safe_load((run_dir / "checkpoint-best-seed44" / "params.yaml").read_text())
    assert c["base"]["checkpoint_rule"] == "best" and c["base"]["seed"] == 44
    need = needed_pipeline_stages(cells)
    assert "general_distill@tinybert" in need  # the plain cells' and checkpoint-best's


def test_a_variant_that_does_not_give_valid_params_is_refused_naming_it(tmp_path, monkeypatch):
    from kdistill.config import ParamsError
    from pipelines import study

    p = load_params(ROOT / "params.yaml")
    raw = p.model_dump(mode="json")
    raw["studies"]["seeds"]["variants"] = {"wide": {"recipes": ["tinybert"],
                                                    "change": {"general_distill": {"tinybert": {"studnt": {}}}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    monkeypatch.setattr(study, "pipeline_file", lambda profile: (ROOT / "dvc.yaml", tmp_path / "params.yaml",
                                                                 tmp_path / "outputs"))
    monkeypatch.setattr(study, "ROOT", tmp_path)
    with pytest.raises(ParamsError, match=r"studies.seeds.variants.wide.change does not give valid params: .*"
                                          r"general_distill.tinybert.studnt"):
        study.study_pipeline("default", "seeds")


def test_a_variant_cell_finds_its_general_students_where_the_study_puts_them(tmp_path, monkeypatch):
    from kdistill.paths import Paths

    monkeypatch.delenv("KDISTILL_GENERAL_OUTPUTS", raising=False)
    cell = Paths(tmp_path / "outputs-seeds" / "v-seed43", tmp_path / "outputs")
    assert cell.general("tinybert") == tmp_path / "outputs" / "general" / "tinybert"
    monkeypatch.setenv("KDISTILL_GENERAL_OUTPUTS", "outputs-seeds/v")  # relative to the project, as in dvc.yaml
    cell = Paths(tmp_path / "outputs-seeds" / "v-seed43", tmp_path / "outputs")
    assert cell.general("tinybert") == ROOT / "outputs-seeds" / "v" / "general" / "tinybert"
    assert cell.teacher == tmp_path / "outputs" / "teacher" and cell.student("tinybert").parent.parent == cell.root


def test_the_seeds_table_sets_each_variant_against_the_default_seed_by_seed():
    from pipelines.study import study_md

    def ms(xs):
        import statistics
        return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs), "n": len(xs), "values": xs}

    s = {"study": "seeds", "profile": "default", "task": "sst2", "metric": "accuracy", "teacher": 0.9,
         "cells": [{"label": "seed 1", "variant": None}, {"label": "seed 2", "variant": None},
                   {"label": "init-random, seed 1", "variant": "init-random"},
                   {"label": "init-random, seed 2", "variant": "init-random"}],
         "models": {"tinybert": {"score": ms([0.80, 0.82]), "retention": ms([0.80 / 0.9, 0.82 / 0.9])}},
         "variants": {"init-random": {"change": {"general_distill": {"tinybert": {"student": {"init": "random"}}}},
                                      "models": {"tinybert": {"score": ms([0.70, 0.73]),
                                                              "retention": ms([0.70 / 0.9, 0.73 / 0.9]),
                                                              "minus_default": {**ms([-0.10, -0.09]),
                                                                                "beyond_two_std": True}}}}}}
    md = study_md(s)
    assert "Seeds: seed 1, seed 2 (mean ± sample standard deviation over 2 runs)." in md
    assert "| init-random | tinybert | 0.7150 ± 0.0212 |" in md
    assert "| -0.0950 ± 0.0071 | yes | 0.7000, 0.7300 |" in md
    assert '`init-random`: {"general_distill": {"tinybert": {"student": {"init": "random"}}}}' in md


def test_teacher_init_controls_are_stages_only_of_the_profiles_that_name_them():
    """task_distill.teacher_init_controls: one stage per recipe named, built from dvc.yaml's baseline stage: it reads
    what the general stage reads (the teacher with its MLM head, the recipe's general params), never a general
    student, and evaluate reads its output. The default pipeline (a fixed dvc.yaml) refuses the key."""
    import shutil

    from kdistill.errors import KdistillError
    from pipelines.stage_graph import RUNS, check_default, profile_pipeline

    had = (RUNS / "mpnet").exists()
    try:
        stages = load_stages(profile_pipeline("mpnet"))
    finally:
        if not had:
            shutil.rmtree(RUNS / "mpnet", ignore_errors=True)
    out = ROOT / "outputs-mpnet"
    controls = {n for n in stages if n.startswith("init_control@")}
    assert controls == {f"init_control@{r}" for r in ("tinybert", "distilbert", "mobilebert", "minilm")}
    c = stages["init_control@minilm"]
    assert c.upstream == {"prepare", "augment", "teacher_mlm"}  # no general student, no fine-tuned teacher
    assert c.outs[0] == out / "init_controls" / "minilm" and "tasks.task_distill init-minilm" in c.cmd
    assert ROOT / "kdistill" / "recipes" / "minilm.py" in c.deps
    assert controls <= stages["evaluate"].upstream
    assert not any(n.startswith("init_control") for n in load_stages(ROOT / "runs" / "smoke" / "dvc.yaml"))
    check_default(load_params(ROOT / "params.yaml"))
    with pytest.raises(KdistillError, match="teacher_init_controls.*set it in a profile"):
        check_default(load_params(overrides={"task_distill": {"teacher_init_controls": ["minilm"]}}))


def test_the_seeds_table_and_the_report_set_each_student_against_both_controls():
    from pipelines.study import study_md
    from tasks.evaluate import controls_md

    def ms(xs):
        import statistics
        return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs), "n": len(xs), "values": xs}

    d = lambda xs, above: {**ms(xs), "above_two_std": above}  # noqa: E731
    s = {"study": "seeds", "profile": "mpnet", "task": "sst2", "metric": "accuracy", "teacher": 0.9,
         "cells": [{"label": "seed 1", "variant": None}, {"label": "seed 2", "variant": None}],
         "models": {"tinybert": {"score": ms([0.88, 0.87]), "retention": ms([0.88 / 0.9, 0.87 / 0.9]),
                                 "minus_baseline": d([0.01, 0.02], True), "minus_teacher_init": d([0.1, 0.05], False)},
                    "baseline-tinybert": {"score": ms([0.87, 0.85]), "retention": ms([0.87 / 0.9, 0.85 / 0.9])},
                    "teacher-init-tinybert": {"score": ms([0.78, 0.82]), "retention": ms([0.78 / 0.9, 0.82 / 0.9])}}}
    md = study_md(s)
    assert ("| model | accuracy mean ± std | retention mean ± std | minus baseline: mean ± std | margin > 2 std | "
            "minus teacher-init: mean ± std | margin > 2 std | per seed |") in md
    assert "| +0.0150 ± 0.0071 | yes | +0.0750 ± 0.0354 | no | 0.8800, 0.8700 |" in md
    assert "| teacher-init-tinybert | 0.8000 ± 0.0283 | 88.89% ± 3.14% | - | - | - | - | 0.7800, 0.8200 |" in md
    models = {"tinybert": {"score": 0.88}, "baseline-tinybert": {"score": 0.87}, "teacher-init-tinybert": {"score": 0.8},
              "minilm": {"score": 0.85}, "baseline-minilm": {"score": 0.84}}
    lines = controls_md({"metric": "accuracy", "models": models})
    assert "| tinybert | 0.8800 | 0.8700 | 0.8000 | +0.0100 | +0.0800 |" in lines
    assert not any(line.startswith("| minilm") for line in lines)  # no teacher-initialised control: not listed
    assert controls_md({"metric": "accuracy", "models": {k: v for k, v in models.items() if "init" not in k}}) == []


def test_a_profile_with_the_default_teacher_corpus_and_general_params_reads_its_general_students(monkeypatch):
    """The general stages depend on the teacher, the corpus and the general params, not on the task: a profile with
    the same values as params.yaml (ner, squad) has no teacher_mlm or general stage of its own; its stages read the
    default pipeline's, and its flow graph holds the default's stages that make them (DVC skips them once the
    default pipeline has run). A profile with another teacher (mpnet) or other general params (smoke) keeps its own."""
    from kdistill.paths import Paths
    from pipelines.stage_graph import load_pipeline, profile_pipeline, shares_general

    assert shares_general(load_params(ROOT / "profiles" / "squad.yaml"))
    assert not shares_general(load_params(ROOT / "profiles" / "mpnet.yaml"))
    assert not shares_general(load_params(ROOT / "profiles" / "smoke.yaml"))
    changed = load_params(ROOT / "profiles" / "squad.yaml", overrides={"general_distill": {"minilm": {"optim": {
        "max_steps": 7}}}})
    assert not shares_general(changed)
    stages = load_stages(ROOT / "runs" / "squad" / "dvc.yaml")
    assert not any(n.startswith(("general_distill", "teacher_mlm")) for n in stages)
    td = stages["task_distill@minilm"]
    assert ROOT / "outputs" / "general" / "minilm" in td.deps and "KDISTILL_GENERAL_FROM=outputs " in td.cmd
    assert ROOT / "outputs" / "teacher_mlm" in stages["augment"].deps
    assert ROOT / "outputs-squad" / "teacher" in td.deps  # everything else is the profile's own
    graph = load_pipeline(ROOT / "runs" / "squad" / "dvc.yaml")
    default = {"prepare:default", "teacher_mlm", *(f"general_distill@{r}" for r in ("tinybert", "distilbert",
                                                                                  "mobilebert", "minilm"))}
    assert set(graph) == set(stages) | default
    assert graph["prepare:default"].target == "prepare" and graph["prepare"].target == "runs/squad/dvc.yaml:prepare"
    assert graph["task_distill@minilm"].upstream == {"prepare", "augment", "teacher_finetune", "general_distill@minilm"}
    assert graph["general_distill@minilm"].upstream == {"prepare:default", "teacher_mlm"}
    smoke = load_pipeline(ROOT / "runs" / "smoke" / "dvc.yaml")
    assert set(smoke) == set(load_stages(ROOT / "runs" / "smoke" / "dvc.yaml"))
    # the committed generated pipelines are what generation writes
    for name in ("squad", "ner", "bbc-news"):
        committed = (ROOT / "runs" / name / "dvc.yaml").read_text()
        assert profile_pipeline(name).read_text() == committed, f"runs/{name}/dvc.yaml is stale: regenerate it"
    monkeypatch.setenv("KDISTILL_GENERAL_FROM", "outputs")
    paths = Paths(ROOT / "outputs-squad")
    assert paths.general("tinybert") == ROOT / "outputs" / "general" / "tinybert"
    assert paths.teacher_mlm == ROOT / "outputs" / "teacher_mlm" and paths.teacher == ROOT / "outputs-squad" / "teacher"


def test_a_profile_distils_only_the_recipes_it_names():
    """base.recipes: each recipe named gets its general, task and control stages, the others none; a profile that
    shares the default's general students pulls only its own recipes' general stages; evaluate and export take those
    students; a control or a study naming another recipe is refused with its key before any work."""
    import shutil

    from kdistill.errors import KdistillError
    from pipelines.stage_graph import RUNS, load_pipeline, profile_pipeline, shares_general
    from pipelines.study import check_recipes
    from tasks.evaluate import models
    from tasks.export import exported_models

    name = "recipes-subset-test"
    src = ROOT / "profiles" / f"{name}.yaml"
    src.write_text(yaml.safe_dump({"extends": "squad.yaml", "base": {"recipes": ["minilm", "tinybert"]}}))
    try:
        p = load_params(src)
        assert p.base.recipes == ["minilm", "tinybert"] and shares_general(p)
        per_recipe = {n for n in load_stages(profile_pipeline(name)) if "@" in n}
        assert per_recipe == {f"{s}@{r}" for s in ("task_distill", "baseline") for r in ("minilm", "tinybert")}
        graph = load_pipeline(RUNS / name / "dvc.yaml")
        assert {n for n in graph if n.startswith("general")} == {"general_distill@minilm", "general_distill@tinybert"}
        check_recipes("seeds", p, "x.yaml")  # squad's studies measure tinybert
        with pytest.raises(KdistillError, match=r"x.yaml: key 'studies.seeds.recipes': distilbert not among "
                                                r"base.recipes \['minilm', 'tinybert'\].*add it to base.recipes"):
            check_recipes("seeds", load_params(src, {"studies": {"seeds": {"recipes": ["distilbert"]}}}), "x.yaml")
        with pytest.raises(ParamsError, match=r"teacher_init_controls': mobilebert is not among base.recipes"):
            load_params(src, {"task_distill": {"teacher_init_controls": ["mobilebert"]}})
        with pytest.raises(ParamsError, match=r"base.recipes': unknown recipe\(s\) \['bert'\]"):
            load_params(src, {"base": {"recipes": ["bert"]}})
    finally:
        src.unlink()
        shutil.rmtree(RUNS / name, ignore_errors=True)
    paths = Paths(ROOT / "outputs-x")
    assert [n for n, _ in models(paths, ["tinybert"], ("tinybert",))] == ["teacher", "tinybert", "baseline-tinybert",
                                                                           "teacher-init-tinybert"]
    assert [n for n, _ in exported_models(paths, ["minilm"])] == ["teacher", "minilm"]
