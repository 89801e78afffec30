"""Studies over the task-distillation stages, on the teachers and general students a pipeline already made.

`python -m pipelines.study ablation` (make ablation): each augmentation method of `studies.ablation.methods` x each
student of `studies.ablation.recipes`: augmentation, then task distillation. `python -m pipelines.study seeds`
(make seeds): augmentation, task distillation and the no-teacher baselines once per seed of `studies.seeds.seeds`.

A study is a DVC pipeline of its own, generated like a profile's (pipelines/stage_graph.py): one *cell* per method
or seed, each with its params file (`runs/<study>/<cell>/params.yaml`: the profile's params plus the cell's change)
and its outputs (`outputs-<study>/<cell>/`); the cell's stages read the data, teachers and general students from the
pipeline's outputs (KDISTILL_SHARED_OUTPUTS). The cell whose params equal the pipeline's is the pipeline itself, not
run twice. One Prefect flow runs the pipeline stages the study needs and the cells' stages side by side, DVC
skipping whatever is up to date, so an interrupted study resumes where it stopped. The table goes to
reports/<study>.md and reports/<study>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from prefect import flow
from prefect.states import Failed

from kdistill.errors import KdistillError

from . import stage_zygote
from .flow import exit_on_error, result_of, run_graph, stage_env
from .flow import preflight as pipeline_preflight
from .run_lock import pipeline_lock
from .stage_graph import (
    GENERAL_FROM,
    ROOT,
    _is_general_out,
    _move,
    _write_if_changed,
    closure,
    init_control_stage,
    link_stages,
    load_pipeline,
    load_stages,
    pipeline_file,
    runtime_file,
    shares_general,
    split_params,
    write_runtime,
)

STUDIES = ("ablation", "seeds")


@dataclass(frozen=True)
class Cell:
    name: str  # a method (none, wordnet, tinybert) or seed<N>
    label: str  # what the table calls it
    overrides: dict  # on top of the profile's params
    recipes: tuple[str, ...]
    baselines: bool
    shared: bool  # params equal to the pipeline's: its outputs are the pipeline's own
    variant: str | None = None  # seeds: the variant (studies.seeds.variants) the cell measures; None: the pipeline's
    general: str | None = None  # where its general students are, when the variant has its own (outputs-<study>/<v>)


def cells(study: str, p) -> list[Cell]:
    if study == "ablation":
        a = p.studies.ablation
        return [Cell(m, f"augment {m}", {"augment": {"method": m}}, tuple(a.recipes), False, m == p.augment.method)
                for m in a.methods]
    from kdistill.config import deep_merge

    s = p.studies.seeds
    out = [Cell(f"seed{n}", f"seed {n}", {"base": {"seed": n}}, tuple(s.recipes), s.baselines, n == p.base.seed)
           for n in s.seeds]
    for v, spec in s.variants.items():
        general = v if "general_distill" in spec.change else None
        out += [Cell(f"{v}-seed{n}", f"{v}, seed {n}", deep_merge(spec.change, {"base": {"seed": n}}),
                     tuple(spec.recipes), False, False, v, general) for n in s.seeds]
    return out


def study_name(profile: str, study: str) -> str:
    return study if profile == "default" else f"{profile}-{study}"


def _fill(value, recipe: str):
    if isinstance(value, str):
        return value.replace("${item}", recipe)
    if isinstance(value, list):
        return [_fill(v, recipe) for v in value]
    if isinstance(value, dict):
        return {_fill(k, recipe): _fill(v, recipe) for k, v in value.items()}
    return value


SHARED = ("outputs/data", "outputs/teacher", "outputs/teacher_mlm", "outputs/general")


def _place(path: str, shared_out: str, cell_out: str, general_out: str | None = None,
           general_from: str | None = None) -> str:
    """A pipeline path as a cell sees it: read-only inputs in the pipeline's outputs (the general students in the
    variant's own folder when it has one; the teacher with its MLM head and the general students in the default
    pipeline's when the profile shares them), everything else its own."""
    if general_out and (path == "outputs/general" or path.startswith("outputs/general/")):
        return _move(path, general_out)
    if general_from and _is_general_out(path):
        return _move(path, general_from)
    if any(path == s or path.startswith(s + "/") for s in SHARED):
        return _move(path, shared_out)  # unchanged for the default profile (shared_out "outputs")
    return _move(path, cell_out)


def _cell_stage(body: dict, recipe: str, params_rel: str, shared_out: str, cell_out: str,
                general_out: str | None = None, general_from: str | None = None) -> dict:
    body = _fill(dict(body), recipe)
    place = lambda e: _place(e, shared_out, cell_out, general_out, general_from) if isinstance(e, str) else {  # noqa: E731
        _place(k, shared_out, cell_out, general_out, general_from): v for k, v in e.items()}
    body["wdir"] = "../.."
    general_env = f"KDISTILL_GENERAL_OUTPUTS={general_out} " if general_out else ""
    general_env += f"KDISTILL_GENERAL_FROM={general_from} " if general_from else ""
    body["cmd"] = (f"KDISTILL_PARAMS={params_rel} KDISTILL_OUTPUTS={cell_out} KDISTILL_SHARED_OUTPUTS={shared_out} "
                   f"{general_env}{body['cmd']}")
    for key in ("deps", "outs", "metrics", "plots"):
        if key in body:
            body[key] = [place(e) for e in body[key]]
    keys, runtime = split_params(body.get("params", []))
    body["params"] = [{params_rel: keys}] + [{runtime_file(params_rel): v} for e in runtime for v in e.values()]
    return body


def study_pipeline(profile: str, study: str) -> tuple[Path, list[Cell]]:
    """Write runs/<study>/dvc.yaml and each cell's params.yaml (only when changed); the dvc.yaml and the cells."""
    from kdistill.config import ParamsError, deep_merge, load_params, parse_params

    _, params_file, out_root = pipeline_file(profile)
    p = load_params(params_file)
    name = study_name(profile, study)
    shared_out = out_root.name
    general_from = GENERAL_FROM if profile != "default" and shares_general(p) else None
    root = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stages = {}
    the_cells = cells(study, p)
    base = p.model_dump(mode="json")

    def cell_params(cell_name: str, overrides: dict, variant: str | None = None) -> str:
        raw = deep_merge(base, overrides)
        # the cells' stage runs go to an experiment of their own; a study never adds versions to the registry
        raw["tracking"] = {**raw["tracking"], "experiment_prefix": f"{p.tracking.experiment_prefix}-{study}",
                           "register_models": False}
        params_rel = f"runs/{name}/{cell_name}/params.yaml"
        try:
            cp = parse_params(raw, params_rel)
        except ParamsError as exc:  # a variant's change is the user's text: name where it is written
            if variant is None:
                raise
            source = "params.yaml" if profile == "default" else f"profiles/{profile}.yaml"
            raise ParamsError(f"{source}: studies.seeds.variants.{variant}.change does not give valid "
                              f"params: {exc}") from None
        _write_if_changed(ROOT / params_rel, f"# {study} cell '{cell_name}' ({json.dumps(overrides)} on the "
                          f"{profile} profile): generated by pipelines/study.py, do not edit.\n"
                          + yaml.safe_dump(cp.model_dump(mode="json"), sort_keys=False))
        write_runtime(ROOT / params_rel)
        return params_rel

    generals = set()
    for c in the_cells:
        if c.shared:
            continue
        general_out = f"outputs-{name}/{c.general}" if c.general else None
        if c.general and c.general not in generals:  # the variant's general students, once, at the pipeline's seed
            generals.add(c.general)
            spec = p.studies.seeds.variants[c.variant]
            g_params = cell_params(c.general, spec.change, c.variant)
            for r in c.recipes:
                stages[f"general_distill-{c.general}-{r}"] = _cell_stage(
                    root["general_distill"]["do"], r, g_params, shared_out, general_out, general_out, general_from)
        params_rel = cell_params(c.name, c.overrides, c.variant)
        cell_out = f"outputs-{name}/{c.name}"
        stages[f"augment-{c.name}"] = _cell_stage(root["augment"], "", params_rel, shared_out, cell_out,
                                                  general_from=general_from)
        for r in c.recipes:
            stages[f"task_distill-{c.name}-{r}"] = _cell_stage(root["task_distill"]["do"], r, params_rel, shared_out,
                                                               cell_out, general_out, general_from)
            if c.baselines:
                stages[f"baseline-{c.name}-{r}"] = _cell_stage(root["baseline"]["do"], r, params_rel, shared_out,
                                                               cell_out, general_from=general_from)
            if c.baselines and r in p.task_distill.teacher_init_controls:
                stages[f"init_control-{c.name}-{r}"] = _cell_stage(init_control_stage(root["baseline"]["do"]), r,
                                                                   params_rel, shared_out, cell_out,
                                                                   general_from=general_from)
    header = (f"# Generated by pipelines/study.py for `{study}` on the {profile} profile: do not edit.\n"
              f"# Run with `python -m pipelines.study {study}" + ("" if profile == "default" else f" --profile {profile}")
              + f"`; outputs in outputs-{name}/.\n")
    dvc_file = ROOT / "runs" / name / "dvc.yaml"
    _write_if_changed(dvc_file, header + yaml.safe_dump({"vars": [{"py": ".venv/bin/python"}], "stages": stages},
                                                         sort_keys=False, width=120))
    return dvc_file, the_cells


def needed_pipeline_stages(cells_: list[Cell], init_controls: tuple[str, ...] = ()) -> set[str]:
    """The pipeline stages whose outputs the study reads, and the shared cell's own stages (its controls too)."""
    need = {"prepare", "teacher_finetune", "teacher_mlm"}
    for c in cells_:
        if not c.general:
            need |= {f"general_distill@{r}" for r in c.recipes}
        if c.shared:
            need |= {"augment", *(f"task_distill@{r}" for r in c.recipes)}
            need |= {f"baseline@{r}" for r in c.recipes} if c.baselines else set()
            need |= {f"init_control@{r}" for r in c.recipes if r in init_controls} if c.baselines else set()
    return need


def cell_root(profile: str, study: str, c: Cell) -> Path:
    return pipeline_file(profile)[2] if c.shared else ROOT / f"outputs-{study_name(profile, study)}" / c.name


def _score(model_dir: Path, metric: str) -> float:
    f = model_dir / "metrics.json"
    if not f.is_file():
        raise KdistillError(f"{f} missing: the stage that writes it did not finish")
    return float(json.loads(f.read_text())[metric])


def _selection(model_dir: Path) -> dict | None:
    """Which evaluated state the stage kept and why (base.checkpoint_rule's record), to compare the rules."""
    f = model_dir / "kdistill.json"
    return json.loads(f.read_text()).get("selection") if f.is_file() else None


def _mean_std(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs),
            "values": xs}


def _score_stats(scores: list[float], teacher: float) -> dict:
    return {"score": _mean_std(scores), "retention": _mean_std([s / teacher for s in scores])}


def summarize(profile: str, study: str, cells_: list[Cell], p) -> dict:
    """Each cell's dev metric and retention; for seeds, mean and standard deviation per model, and each student's
    margin over its baseline (mean and standard deviation of the per-seed difference)."""
    from kdistill.data.task import load_task
    from kdistill.paths import Paths

    shared = Paths(pipeline_file(profile)[2])
    metric = load_task(shared.data).metric
    teacher = _score(shared.teacher, metric)
    rows = []
    for c in cells_:
        paths = Paths(cell_root(profile, study, c))
        aug_file = paths.reports / "augment.json"
        aug = json.loads(aug_file.read_text()) if aug_file.is_file() else {}
        row = {"cell": c.name, "label": c.label, "shared_with_pipeline": c.shared, "overrides": c.overrides,
               "variant": c.variant,
               "training_rows": aug.get("rows"), "augment_sentences_per_s": aug.get("sentences_per_s"),
               "augment_samples": aug.get("samples", [])[:3], "models": {}}
        for r in c.recipes:
            s = _score(paths.student(r), metric)
            row["models"][r] = {"score": s, "retention": s / teacher,
                                "selection": _selection(paths.student(r))}
            if c.baselines:
                b = _score(paths.baseline(r), metric)
                row["models"][f"baseline-{r}"] = {"score": b, "retention": b / teacher}
            if c.baselines and r in p.task_distill.teacher_init_controls:
                b = _score(paths.init_control(r), metric)
                row["models"][f"teacher-init-{r}"] = {"score": b, "retention": b / teacher}
        rows.append(row)
    out = {"study": study, "profile": profile, "task": p.base.task, "metric": metric, "teacher": teacher,
           "cells": rows}
    if study == "seeds":
        plain = [r for r in rows if r["variant"] is None]
        names = list(plain[0]["models"])
        out["models"] = {}
        for n in names:
            scores = [r["models"][n]["score"] for r in plain]
            out["models"][n] = _score_stats(scores, teacher)
        for r in cells_[0].recipes:
            for control, key in ((f"baseline-{r}", "minus_baseline"), (f"teacher-init-{r}", "minus_teacher_init")):
                if control in names:
                    d = _mean_std([row["models"][r]["score"] - row["models"][control]["score"] for row in plain])
                    d["above_two_std"] = d["mean"] > 2 * d["std"]
                    out["models"][r][key] = d
        # each variant against the pipeline's params, seed by seed (the same seed: the same data order and heads)
        out["variants"] = {}
        for v, spec in p.studies.seeds.variants.items():
            vrows = [r for r in rows if r["variant"] == v]
            models = {}
            for r in spec.recipes:
                scores = [row["models"][r]["score"] for row in vrows]
                m = _score_stats(scores, teacher)
                if r in names:
                    d = _mean_std([a - b for a, b in zip(scores, out["models"][r]["score"]["values"])])
                    d["beyond_two_std"] = abs(d["mean"]) > 2 * d["std"]
                    m["minus_default"] = d
                models[r] = m
            out["variants"][v] = {"change": spec.change, "models": models}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def study_md(s: dict) -> str:
    metric, task = s["metric"], s["task"]
    lines = [f"# {s['study'].capitalize()} study: {task} ({s['profile']} profile)", "",
             f"Dev {metric}; retention = student / teacher; teacher {s['teacher']:.4f} (shared by every cell, as are "
             "the prepared data and the general students)."]
    if s["study"] == "ablation":
        recipes = [k for k in s["cells"][0]["models"]]
        lines += ["", "| augmentation | training rows | augment sentences/s | "
                  + " | ".join(f"{r} {metric} | {r} retention" for r in recipes) + " |",
                  "|---|---|---|" + "---|---|" * len(recipes)]
        for c in s["cells"]:
            lines.append(f"| {c['cell']}{' (pipeline)' if c['shared_with_pipeline'] else ''} | {c['training_rows']} | "
                         f"{c['augment_sentences_per_s'] or '-'} | "
                         + " | ".join(f"{c['models'][r]['score']:.4f} | {_pct(c['models'][r]['retention'])}"
                                      for r in recipes) + " |")
        for c in s["cells"]:
            for pair in c["augment_samples"][:2]:
                lines.append(f"\n`{c['cell']}`: {pair['sentence1_original']!r} -> {pair['sentence1_augmented']!r}")
    else:
        seeds = [c["label"] for c in s["cells"] if c.get("variant") is None]  # the variants' cells: their own table
        # the teacher-initialised control's columns only where it was trained (task_distill.teacher_init_controls)
        keys = ["minus_baseline"] + (["minus_teacher_init"] if any("minus_teacher_init" in m
                                                                  for m in s["models"].values()) else [])
        heads = {"minus_baseline": "baseline", "minus_teacher_init": "teacher-init"}
        lines += ["", f"Seeds: {', '.join(seeds)} (mean ± sample standard deviation over {len(seeds)} runs).", "",
                  f"| model | {metric} mean ± std | retention mean ± std | "
                  + "".join(f"minus {heads[k]}: mean ± std | margin > 2 std | " for k in keys) + "per seed |",
                  "|---|---|---|" + "---|---|" * len(keys) + "---|"]
        for n, m in s["models"].items():
            margins = ""
            for k in keys:
                d = m.get(k)
                margins += (f"{d['mean']:+.4f} ± {d['std']:.4f} | {'yes' if d['above_two_std'] else 'no'} | " if d
                            else "- | - | ")
            lines.append(f"| {n} | {m['score']['mean']:.4f} ± {m['score']['std']:.4f} | "
                         f"{_pct(m['retention']['mean'])} ± {_pct(m['retention']['std'])} | {margins}"
                         + ", ".join(f"{v:.4f}" for v in m["score"]["values"]) + " |")
        if s.get("variants"):
            lines += ["", "Levers over the same seeds (`studies.seeds.variants`), each against the pipeline's params "
                      "seed by seed:", "",
                      f"| variant | model | {metric} mean ± std | retention mean ± std | minus default: mean ± std | "
                      "beyond 2 std | per seed |", "|---|---|---|---|---|---|---|"]
            for v, spec in s["variants"].items():
                for n, m in spec["models"].items():
                    d = m.get("minus_default")
                    lines.append(f"| {v} | {n} | {m['score']['mean']:.4f} ± {m['score']['std']:.4f} | "
                                 f"{_pct(m['retention']['mean'])} ± {_pct(m['retention']['std'])} | "
                                 + (f"{d['mean']:+.4f} ± {d['std']:.4f} | {'yes' if d['beyond_two_std'] else 'no'}"
                                    if d else "- | -")
                                 + " | " + ", ".join(f"{x:.4f}" for x in m["score"]["values"]) + " |")
            for v, spec in s["variants"].items():
                lines.append(f"\n`{v}`: {json.dumps(spec['change'])}")
    if s.get("cell_stage_seconds"):
        times = s["cell_stage_seconds"]
        total = sum(v for v in times.values() if v)
        lines += ["", f"Cost of the cells: {len(times)} stages, {total:.0f} s of stage time when they last ran "
                  f"(CPU capability {s['cpu_capability']}, {s['cpus']} CPUs; stages run side by side, so wall time is "
                  f"less); this invocation ran {s['stages_run']} stage(s) in {s['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


@flow(name="kdistill-study", log_prints=True)
def study_flow(study: str = "ablation", profile: str = "default"):
    """A study over a profile's pipeline; a refusal or a failed stage ends the flow run Failed with its one line."""
    try:
        with pipeline_lock(profile):
            return _run_study(study, profile)
    except KdistillError as exc:
        return Failed(message=str(exc))


def _run_study(study: str, profile: str) -> dict:
    from kdistill.config import load_params
    from kdistill.io import write_json_atomic, write_text_atomic
    from kdistill.paths import Paths
    from kdistill.train.precision import available_cpus, cpu_capability


    t0 = time.time()
    base_dvc, params_file, out_root = pipeline_file(profile)
    p = load_params(params_file)
    dvc_file, the_cells = study_pipeline(profile, study)
    base = load_pipeline(base_dvc)  # with the default's general stages, when the profile reads them
    need = needed_pipeline_stages(the_cells, tuple(p.task_distill.teacher_init_controls))
    stages = {**closure(base, need), **load_stages(dvc_file)}
    for s in stages.values():  # re-link across the two files (cells read the pipeline's teacher)
        s.upstream, s.downstream = set(), set()
    link_stages(stages)
    own = sum(1 for n in stages if n not in base)
    print(f"study {study} ({profile} profile): cells {', '.join(c.name for c in the_cells)}; {own} stages of its own "
          f"and the {len(stages) - own} pipeline stages it reads from (DVC skips what is up to date)")
    work = ROOT / "work" / f"outputs-{study_name(profile, study)}"
    tl = run_graph(stages, p, f"study-{study_name(profile, study)}", work)
    summary = summarize(profile, study, the_cells, p)
    # each stage's last time (kept by run_graph): what the cells cost, whichever invocation computed them
    known = json.loads((work / "stage_seconds.json").read_text())
    summary.update(wall_seconds=round(time.time() - t0, 1), stages_run=len(tl["stages"]),
                   cell_stage_seconds={n: known.get(n) for n in stages if n not in base},
                   cpu_capability=cpu_capability(), cpus=available_cpus())
    rep = Paths(out_root).reports
    write_json_atomic(rep / f"{study}.json", summary)
    md = study_md(summary)
    write_text_atomic(rep / f"{study}.md", md)
    print("\n" + md)
    print(f"study {study}: wrote {rep / f'{study}.md'} and {rep / f'{study}.json'}")
    return summary


def check_recipes(study: str, p, source: str) -> None:
    """A study measures the pipeline's students again: each recipe it names must be one of base.recipes."""
    s = getattr(p.studies, study)
    named = [("recipes", s.recipes)]
    if study == "seeds":
        named += [(f"variants.{v}.recipes", spec.recipes) for v, spec in s.variants.items()]
    for key, names in named:
        missing = [r for r in names if r not in p.base.recipes]
        if missing:
            raise KdistillError(f"{source}: key 'studies.{study}.{key}': {', '.join(missing)} not among base.recipes "
                                f"{p.base.recipes} (a study measures the pipeline's students again); add it to "
                                "base.recipes or leave it out here")


def preflight(study: str, profile: str) -> None:
    if study not in STUDIES:
        raise KdistillError(f"unknown study {study!r}; studies: {', '.join(STUDIES)}")
    src, p = pipeline_preflight(profile)  # params valid, tracking server up
    check_recipes(study, p, str(src.relative_to(ROOT)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", choices=STUDIES)
    ap.add_argument("--profile", default="default", help="default (params.yaml) or the name of a file in profiles/")
    args = ap.parse_args()
    t0 = time.time()

    def run() -> None:
        preflight(args.study, args.profile)
        with stage_zygote.early(stage_env(None, 1)):  # its imports overlap the Prefect server's start
            result_of(study_flow(args.study, args.profile, return_state=True))
        print(f"study {args.study} ({args.profile}) finished in {time.time() - t0:.1f}s")

    exit_on_error(run)


if __name__ == "__main__":
    main()
