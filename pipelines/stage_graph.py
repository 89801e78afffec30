"""The stage graph, read from a dvc.yaml through DVC itself (no hand-kept stage list), and per-profile pipelines.

A profile (profiles/NAME.yaml) is a DVC pipeline of its own: `runs/NAME/dvc.yaml` is generated from the root dvc.yaml
with every output moved under `outputs-NAME/` and every parameter read from `runs/NAME/params.yaml` (the profile
fully resolved: `extends` followed, defaults filled in), so DVC tracks, caches and skips its stages like the default
ones, `dvc.lock` for it lives in `runs/NAME/`, and `dvc metrics show` / `dvc params diff` list it beside the default.

General students depend on the teacher, the corpus and the general params, not on the task. A profile whose values
for those equal params.yaml's (`general_inputs`) has no teacher_mlm or general stage of its own: its stages read the
default pipeline's outputs/teacher_mlm and outputs/general, and its flow runs the default's stages that make them
(skipped by DVC when the default pipeline has run), so a second task with the same teacher distils nothing again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kdistill.errors import KdistillError

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs"
RUNTIME = "runtime.yaml"  # beside each params file: what its precision settings resolve to on this machine


@dataclass
class Stage:
    name: str  # DVC's name, e.g. general_distill@tinybert
    target: str  # what `dvc status` / `dvc commit` take: <dvc.yaml path>:<name>
    cmd: str
    wdir: Path
    deps: list[Path]
    outs: list[Path]
    upstream: set[str] = field(default_factory=set)
    downstream: set[str] = field(default_factory=set)


def inside(path: Path, out: Path) -> bool:
    return path == out or out in path.parents


def load_stages(dvc_file: Path, root: Path = ROOT) -> dict[str, Stage]:
    """Every stage of `dvc_file` (foreach expanded by DVC), linked by what each one reads of another's outputs."""
    from dvc.repo import Repo

    dvc_file = Path(dvc_file).resolve()
    rel = dvc_file.relative_to(root)
    with Repo(str(root)) as repo:
        found = repo.stage.collect(str(dvc_file))  # absolute: DVC resolves relative targets against the cwd
    stages: dict[str, Stage] = {}
    for s in found:
        deps = [Path(d.fs_path) for d in s.deps if type(d).__name__ == "Dependency"]
        outs = [Path(o.fs_path) for o in s.outs]
        target = s.name if rel == Path("dvc.yaml") else f"{rel}:{s.name}"
        stages[s.name] = Stage(s.name, target, s.cmd if isinstance(s.cmd, str) else " && ".join(s.cmd),
                               Path(s.wdir), deps, outs)
    return link_stages(stages)


def link_stages(stages: dict[str, Stage]) -> dict[str, Stage]:
    """Link each stage to the stages whose outputs it reads (also across dvc.yaml files: a study reads the
    pipeline's teacher)."""
    for a in stages.values():
        for b in stages.values():
            # a dep on an output, inside one, or on a folder that holds one (evaluate reads outputs/students)
            if a is not b and any(inside(d, o) or inside(o, d) for d in a.deps for o in b.outs):
                a.upstream.add(b.name)
                b.downstream.add(a.name)
    return stages


def closure(stages: dict[str, Stage], names: set[str]) -> dict[str, Stage]:
    """`names` and every stage they read from, directly or not, with links restricted to that set."""
    keep, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n not in keep:
            keep.add(n)
            todo += stages[n].upstream
    return {n: Stage(s.name, s.target, s.cmd, s.wdir, s.deps, s.outs, s.upstream & keep, s.downstream & keep)
            for n, s in stages.items() if n in keep}


def load_pipeline(dvc_file: Path, root: Path = ROOT) -> dict[str, Stage]:
    """A pipeline's stages and the stages of the root dvc.yaml that it reads from (a profile sharing the default's
    general students: those stages, the teacher_mlm and prepare stages before them), linked. A root stage whose name
    the profile uses too (prepare) is named `<name>:default` here; its DVC target is unchanged."""
    stages = load_stages(dvc_file, root)
    if Path(dvc_file).resolve() == (root / "dvc.yaml").resolve():
        return stages
    default = load_stages(root / "dvc.yaml", root)
    need = {d.name for d in default.values() for s in stages.values()
            if any(inside(p, o) or inside(o, p) for p in s.deps for o in d.outs)}
    if not need:
        return stages
    pulled = closure(default, need)
    merged = {}
    for n, s in [*((f"{n}:default" if n in stages else n, s) for n, s in pulled.items()), *stages.items()]:
        merged[n] = Stage(n, s.target, s.cmd, s.wdir, s.deps, s.outs)
    return link_stages(merged)


# --- per-profile pipelines -----------------------------------------------------------------------------------------

def _move(path: str, out_dir: str) -> str:
    if path == "outputs" or path.startswith("outputs/"):
        return out_dir + path.removeprefix("outputs")
    if path.startswith("reports/"):
        return f"{out_dir}/{path}"
    return path


def _move_entries(entries: list, out_dir: str) -> list:
    moved = []
    for e in entries:
        if isinstance(e, str):
            moved.append(_move(e, out_dir))
        else:  # {path: {options}}
            moved.append({_move(k, out_dir): v for k, v in e.items()})
    return moved


def runtime_file(params_rel: str) -> str:
    """The runtime record that goes with a params file (params.yaml -> runtime.yaml, runs/x/params.yaml ->
    runs/x/runtime.yaml)."""
    return str(Path(params_rel).with_name(RUNTIME))


def split_params(entries: list) -> tuple[list[str], list[dict]]:
    """A stage's params entries: (the keys it reads from the params file, the runtime record entries)."""
    keys, runtime = [], []
    for e in entries:
        if isinstance(e, str):
            keys.append(e)
        elif set(e) == {RUNTIME}:
            runtime.append(e)
        else:
            keys += [k for v in e.values() for k in v]
    return keys, runtime


def precision_record(params_file: Path) -> dict:
    """Every precision setting of a params file as this machine resolves it (null: base.precision; `auto`: bf16
    only where native). DVC records it for each stage that computes in a precision, so a result computed in bf16
    elsewhere is stale here, never taken for an fp32 one."""
    from kdistill.config import load_params
    from kdistill.train.precision import resolve_precision
    from kdistill.train.trainer import default_device

    p = load_params(params_file)
    device = default_device()
    base = resolve_precision(p.base.precision, device)
    found = {}

    def walk(node, path):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{path}{k}.")
            elif k == "precision":
                found[f"{path}{k}"] = base if v is None else resolve_precision(v, device)

    walk(p.model_dump(mode="json"), "")
    return {"precision": found}


def write_runtime(params_file: Path) -> Path:
    """Write the runtime record beside `params_file` (only when it changed); its path."""
    path = Path(params_file).with_name(RUNTIME)
    text = ("# What the precision settings resolve to on this machine: generated by `make pipeline` (pipelines/"
            "stage_graph.py), read by DVC; commit it with the dvc.lock it matches.\n" + yaml.safe_dump(precision_record(params_file), sort_keys=True))
    _write_if_changed(path, text)
    return path


# what the default pipeline's teacher_mlm and general stages are, when a profile reads them (KDISTILL_GENERAL_FROM)
GENERAL_STAGES = ("teacher_mlm", "general_distill")
GENERAL_OUTS = ("outputs/teacher_mlm", "outputs/general")
GENERAL_FROM = "outputs"


def general_inputs(p) -> dict:
    """Every value the teacher_mlm and general stages compute from: the teacher, seed and precision, the corpus and
    how prepare packs it, the MLM head's fit and each recipe's general params (num_proc changes no byte)."""
    d = p.model_dump(mode="json")
    return {"base": {k: d["base"][k] for k in ("teacher", "seed", "precision")},
            "prepare": {k: v for k, v in d["prepare"].items() if k != "num_proc"},
            "teacher_mlm": d["teacher_mlm"], "general_distill": d["general_distill"]}


def shares_general(params) -> bool:
    """Whether a profile's general students are the default pipeline's: the same inputs as params.yaml, and only
    recipes that the default pipeline distils too (its dvc.yaml has a general stage for each of base.recipes)."""
    from kdistill.config import load_params

    default = load_params(ROOT / "params.yaml")
    return (general_inputs(params) == general_inputs(default)
            and set(params.base.recipes) <= set(default.base.recipes))


def _is_general_report(path: str) -> bool:
    return any(path.startswith(f"reports/losses/{g}") for g in GENERAL_STAGES)


def _is_general_out(path: str) -> bool:
    return any(path == g or path.startswith(g + "/") for g in GENERAL_OUTS)


def _profile_stage(body: dict, name: str, params_rel: str, out_dir: str, general_from: str | None = None) -> dict:
    """A dvc.yaml stage for a profile: its outputs under out_dir, its params from params_rel; with general_from, the
    teacher with its MLM head and the general students read from there (the default pipeline's)."""
    body = dict(body)
    body["wdir"] = "../.."
    env = f"KDISTILL_GENERAL_FROM={general_from} " if general_from else ""
    body["cmd"] = f"KDISTILL_PARAMS={params_rel} KDISTILL_OUTPUTS={out_dir} {env}{body['cmd']}"
    for key in ("deps", "outs", "metrics", "plots"):
        if key in body:
            if general_from and key == "deps":
                body[key] = [d if isinstance(d, str) and _is_general_out(d) else _move_entries([d], out_dir)[0]
                             for d in body[key]]
            else:
                body[key] = _move_entries(body[key], out_dir)
    if "params" in body:
        keys, runtime = split_params(body["params"])
        body["params"] = [{params_rel: keys}] + [{runtime_file(params_rel): v} for e in runtime for v in e.values()]
    return body


def data_deps(deps: list, params) -> list:
    """prepare's deps for a profile: the user's own files (data.train/dev/test) in place of the GLUE root, and a
    local teacher directory inside the project, so DVC re-runs prepare when any of them changes."""
    teacher = params.base.teacher
    local = [teacher] if not Path(teacher).is_absolute() and (ROOT / teacher).is_dir() else []
    if params.data.train is None:
        return deps + local
    own = [f for f in (params.data.train, params.data.dev, params.data.test) if f]
    return [d for d in deps if d != "data/glue"] + own + local


INIT_CONTROL = "init_control"


def init_control_stage(baseline_do: dict) -> dict:
    """The teacher-initialised control's stage (task_distill.teacher_init_controls), made from dvc.yaml's baseline
    stage: the same command, data and budget, but it builds its start as the general stage does (the recipe's
    module and general params, the teacher with its MLM head) instead of reading the general student."""
    body = {k: list(v) if isinstance(v, list) else v for k, v in baseline_do.items()}
    body["cmd"] = body["cmd"].replace("baseline-${item}", "init-${item}")
    deps = [d for d in body["deps"] if d != "outputs/general/${item}"]
    body["deps"] = deps + ["tasks/general_distill.py", "kdistill/recipes/${item}.py", "kdistill/student_init.py",
                           "outputs/teacher_mlm"]
    body["params"] = [*body["params"], "general_distill.${item}"]
    body["outs"] = ["outputs/init_controls/${item}"]
    body["plots"] = [{"reports/losses/init_control_${item}.csv": {"x": "step", "cache": False}}]
    return body


def with_init_controls(stages: dict, recipes: list[str]) -> dict:
    """dvc.yaml's stages plus the teacher-initialised controls of `recipes`, which evaluate then reads."""
    stages = {**stages, INIT_CONTROL: {"foreach": list(recipes),
                                       "do": init_control_stage(stages["baseline"]["do"])}}
    ev = dict(stages["evaluate"])
    ev["deps"] = [*ev["deps"], "outputs/init_controls"]
    ev["params"] = [*ev["params"], "task_distill.teacher_init_controls"]
    stages["evaluate"] = ev
    return {k: stages[k] for k in [*[k for k in stages if k not in ("evaluate", "export")], "evaluate", "export"]}


def profile_pipeline(profile: str) -> Path:
    """Write runs/<profile>/{params.yaml,dvc.yaml} (only when their content changed) and return the dvc.yaml."""
    from kdistill.config import load_params

    src = ROOT / "profiles" / f"{profile}.yaml"
    params = load_params(src)  # validated here, before any stage starts
    run_dir = RUNS / profile
    params_rel = f"runs/{profile}/params.yaml"
    out_dir = f"outputs-{profile}"
    root = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    if params.task_distill.teacher_init_controls:  # more training stages: only where a profile asks for them
        root["stages"] = with_init_controls(root["stages"], params.task_distill.teacher_init_controls)
    general_from = GENERAL_FROM if shares_general(params) else None
    stages = {}
    for name, body in root["stages"].items():
        if general_from and name in GENERAL_STAGES:
            continue  # the default pipeline's stage, which this profile's flow runs (or DVC skips)
        if name == "prepare":
            body = {**body, "deps": data_deps(body["deps"], params)}
        if "foreach" in body:
            stages[name] = {"foreach": body["foreach"],
                            "do": _profile_stage(body["do"], name, params_rel, out_dir, general_from)}
        else:
            stages[name] = _profile_stage(body, name, params_rel, out_dir, general_from)
    plots = []
    for entry in root.get("plots", []):
        for title, spec in entry.items():
            spec = dict(spec)
            if isinstance(spec.get("y"), dict):  # the default's loss curves where its general stages are this one's
                spec["y"] = {k if general_from and _is_general_report(k) else _move(k, out_dir): v
                             for k, v in spec["y"].items()}
            plots.append({f"{profile}: {title}": spec})
    header = (f"# Generated by pipelines/stage_graph.py from dvc.yaml for profiles/{profile}.yaml: do not edit.\n"
              f"# Run with `python -m pipelines.flow --profile {profile}`; outputs in {out_dir}/.\n")
    if general_from:
        header += ("# Same teacher, corpus and general params as params.yaml: the teacher with its MLM head and the "
                   "general\n# students are the default pipeline's (outputs/teacher_mlm, outputs/general; its stages "
                   "in dvc.yaml).\n")
    pipeline = {"vars": root.get("vars", []), "stages": stages, "plots": plots}
    resolved = (f"# profiles/{profile}.yaml resolved (extends followed, defaults filled): generated, do not edit.\n"
                + yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    _write_if_changed(run_dir / "params.yaml", resolved)
    _write_if_changed(run_dir / "dvc.yaml", header + yaml.safe_dump(pipeline, sort_keys=False, width=120))
    return run_dir / "dvc.yaml"


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def check_default(p) -> None:
    """What the committed dvc.yaml cannot run: stages that only a profile's generated pipeline holds."""
    if p.task_distill.teacher_init_controls:
        raise KdistillError("params.yaml: key 'task_distill.teacher_init_controls': each recipe named adds a training "
                            "stage, which only a profile's pipeline holds (dvc.yaml is fixed); set it in a profile "
                            "(profiles/NAME.yaml with `extends: ../params.yaml`) and run `make pipeline PROFILE=NAME`")


def pipeline_file(profile: str) -> tuple[Path, Path, Path]:
    """(dvc.yaml, params file, outputs root) of a profile; `default` is the root pipeline on params.yaml. Writes the
    runtime record beside the params file, which the stages read through DVC."""
    if profile == "default":
        from kdistill.config import load_params

        check_default(load_params(ROOT / "params.yaml"))
        write_runtime(ROOT / "params.yaml")
        return ROOT / "dvc.yaml", ROOT / "params.yaml", ROOT / "outputs"
    src = ROOT / "profiles" / f"{profile}.yaml"
    if not src.is_file():
        names = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))
        raise KdistillError(f"profiles/{profile}.yaml not found (profiles: default, {', '.join(names)})")
    from kdistill.config import load_params

    dvc_file, params_file = profile_pipeline(profile), RUNS / profile / "params.yaml"
    write_runtime(params_file)
    if shares_general(load_params(params_file)):  # its flow also runs the default's general stages
        write_runtime(ROOT / "params.yaml")
    return dvc_file, params_file, ROOT / f"outputs-{profile}"


if __name__ == "__main__":  # `make repro`: the runtime record of the default pipeline before `dvc repro`
    import sys

    print(write_runtime(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "params.yaml"))
