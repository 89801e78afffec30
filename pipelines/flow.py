"""The distillation pipeline as a Prefect flow over the DVC stage graph, running independent stages side by side.

`python -m pipelines.flow` (make pipeline) runs dvc.yaml on params.yaml; `--profile NAME` runs profiles/NAME.yaml as
its own DVC pipeline (runs/NAME/dvc.yaml, outputs in outputs-NAME/; see pipelines/stage_graph.py).

How it runs: the stages and their links come from DVC (pipelines/stage_graph.py). A stage starts as soon as every
stage it reads from is done, up to `base.max_parallel` at once, each with its share of the CPUs (KDISTILL_THREADS).
Each Prefect task asks DVC whether its stage is stale, runs the stage's command, and has DVC record the result
(pipelines/dvc_record.py explains why not `dvc repro`). One parent MLflow run per flow run; each stage's run nests
under it (KDISTILL_PARENT_RUN_ID).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_any
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.exceptions import FailedRun
from prefect.states import Failed

from kdistill.errors import KdistillError
from kdistill.train.precision import available_cpus

from . import stage_zygote
from .dvc_record import DvcRecord
from .remote_stage import deploy_stage_flow, is_training, run_on_pool, stage_deployment
from .run_lock import pipeline_lock
from .stage_exec import StageFailed, _echo, run_command
from .stage_graph import ROOT, Stage, check_default, inside, load_pipeline, pipeline_file


def stage_env(parent_run_id: str | None, threads: int) -> dict:
    """The environment of a stage command (and of the stage server, which forks them)."""
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true", **os.environ}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    env["KDISTILL_THREADS"] = str(threads)
    if parent_run_id:
        env["KDISTILL_PARENT_RUN_ID"] = parent_run_id
    return env


def execute_stage(stage: Stage, threads: int, parent_run_id: str | None, record: DvcRecord, log_dir: Path,
                  log=None, training_pool: str | None = None, known: bool | None = None) -> dict:
    """One DVC stage: skipped when DVC says it is up to date; else its command (on the training pool's worker when
    one is set and this is a training stage), then `dvc commit` here.

    `known`: the verdict of the flow's one `dvc status` of the whole graph (stale_plan): False up to date, True stale
    whatever runs before it; None (unknown: it reads what a stage of this run rewrites) asks DVC now. A `dvc` process
    costs seconds, and the calls are serialised."""
    say = log.info if log else (lambda msg, *a: _echo(stage.name, msg % a))
    if known is False or (known is None and not record.stale(stage.target)):
        say("%s is up to date (dvc status)", stage.name)
        return {"ran": False}
    t0 = time.time()
    log_file = log_dir / f"{stage.name.replace('@', '_')}.log"
    if training_pool and is_training(stage.name):
        say("sending %s to work pool '%s': %s", stage.name, training_pool, stage.cmd)
        run_on_pool(training_pool, stage, parent_run_id, log_file)
    else:
        say("running %s with %d thread(s): %s", stage.name, threads, stage.cmd)
        run_command(stage.name, stage.cmd, stage.wdir, stage_env(parent_run_id, threads), log_file)
    t1 = time.time()
    record.commit(stage.target)
    say("%s done in %.1fs (recorded in dvc.lock)", stage.name, t1 - t0)
    return {"ran": True, "start": t0, "end": t1, "seconds": t1 - t0, "threads": threads}


def _retry_crashes(task, task_run, state) -> bool:
    return state.name == CRASHED


CRASHED, REFUSED = "Stage crashed", "Refused"


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=_retry_crashes, cache_policy=None,
      task_run_name="{stage.name}")
def run_stage(stage: Stage, threads: int, parent_run_id: str | None, record: DvcRecord, log_dir: Path,
              training_pool: str | None = None, known: bool | None = None):
    """A DVC stage as a Prefect task. A refusal (the stage's own `error:` line with exit 2, or DVC's) ends it as a
    Failed task run whose message is that line: no traceback in the terminal or the UI. A crash (any other exit) is
    retried once, since a training stage resumes from its checkpoint, and fails with the last lines of its log.

    (Failures are returned as states, not raised: Prefect logs a raised exception with its traceback. `retries=1`
    also keeps Prefect from logging a refusal's state with an empty traceback, which it does for tasks without.)"""
    try:
        return execute_stage(stage, threads, parent_run_id, record, log_dir, get_run_logger(), training_pool, known)
    except StageFailed as exc:
        return Failed(name=REFUSED if exc.deliberate else CRASHED, message=str(exc))
    except KdistillError as exc:
        return Failed(name=REFUSED, message=str(exc))


def resolve_parallel(spec: int | str, cpus: int) -> int:
    return max(1, cpus // 2) if spec == "auto" else int(spec)


def critical_path(stages: dict[str, Stage], seconds: dict[str, float] | None = None) -> dict[str, float]:
    """Each stage's own time plus the longest chain of stages after it (unknown times count as 1 s)."""
    seconds = seconds or {}
    memo: dict[str, float] = {}

    def length(name: str) -> float:
        if name not in memo:
            own = float(seconds.get(name, 1.0))
            memo[name] = own + max((length(d) for d in stages[name].downstream), default=0.0)
        return memo[name]

    return {n: length(n) for n in stages}


def stage_threads(stages: dict[str, Stage], max_parallel: int, cpus: int) -> dict[str, int]:
    """Each stage's thread count, fixed by the graph, max_parallel and the machine, never by what runs at the moment:
    a different count changes the floating-point sums (and so the bytes of every output), so a stage must compute
    with the same count whether it runs alone or beside another. A stage that the graph never lets run beside
    another (each other stage is before or after it) gets every CPU; the others an equal share."""
    def reach(name: str, edge: str) -> set[str]:
        seen, todo = set(), [name]
        while todo:
            for n in getattr(stages[todo.pop()], edge):
                if n in stages and n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    share = max(1, cpus // max(1, min(max_parallel, len(stages))))
    return {n: cpus if reach(n, "upstream") | reach(n, "downstream") | {n} >= set(stages) else share for n in stages}


def stale_plan(stages: dict[str, Stage], record: DvcRecord, status: dict | None = None) -> dict[str, bool | None]:
    """Each stage's verdict from one `dvc status` of the whole graph before it starts: False (up to date, and reads
    nothing a stale stage will rewrite: skipped), True (stale whatever runs before it: its command, params, code or
    outputs changed, or an input that no stage of this run writes), None (stale or not depending on the bytes a stage
    of this run writes before it: its task asks DVC when its turn comes).

    Under the pipeline lock nothing else changes the project meanwhile, so a verdict holds until the stage's turn.
    `status`: DVC's answer for exactly these stages, when it was asked already under the same lock.
    """
    if status is None:
        status = record.status(*(s.target for s in stages.values()))
    by_target = {s.target: n for n, s in stages.items()}
    stale = {by_target.get(t, t): changes for t, changes in status.items()}
    affected, todo = set(), [n for n in stale if n in stages]
    while todo:
        n = todo.pop()
        if n not in affected:
            affected.add(n)
            todo += stages[n].downstream
    plan: dict[str, bool | None] = {n: False for n in stages if n not in affected}
    for n in affected:
        written = [o for s in stages.values() if s.name in affected and s.name != n for o in s.outs]

        def rewritten(path: str) -> bool:  # an input that a stage of this run writes
            p = (record.root / path).resolve()
            return any(inside(p, o) or inside(o, p) for o in written)

        changes = stale.get(n)
        if changes is None:
            plan[n] = None  # current now; its inputs may change
        elif all(isinstance(c, dict) and set(c) == {"changed deps"} and all(map(rewritten, c["changed deps"]))
                 for c in changes):
            plan[n] = None  # stale only through what a stage before it rewrites
        else:
            plan[n] = True
    return plan


def _inner(fut) -> Future:
    """The concurrent future under a Prefect one. Its `state` would read the task run from the server on every call:
    polled for each running stage, that kept the server and the flow busy on a core the stages need."""
    return getattr(fut, "wrapped_future", fut)


def schedule(stages: dict[str, Stage], max_parallel: int, cpus: int, submit,
             seconds: dict[str, float] | None = None) -> tuple[dict, dict]:
    """Start each stage once its upstream stages are done, at most `max_parallel` at a time.

    `submit(stage, threads)` returns a future. Threads: fixed per stage (stage_threads). Among ready stages the longest remaining
    chain goes first, timed by `seconds` (the last run's stage times) when known, so a long stage does not end up
    alone at the end with a core idle. After a failure nothing new starts; the stages already running finish (and
    are recorded). Returns (results, errors).
    """
    path = critical_path(stages, seconds)
    threads = stage_threads(stages, max_parallel, cpus)
    order = {n: (-path[n], i) for i, n in enumerate(stages)}
    pending, running, results, errors = set(stages), {}, {}, {}
    while pending or running:
        if not errors:
            ready = sorted((n for n in pending if stages[n].upstream <= set(results)), key=order.get)
            while ready and len(running) < max_parallel:
                name = ready.pop(0)
                pending.discard(name)
                running[name] = submit(stages[name], threads[name])
        if not running:
            break
        wait_any([_inner(f) for f in running.values()], timeout=5, return_when=FIRST_COMPLETED)
        for name, fut in list(running.items()):
            if _inner(fut).done():
                del running[name]
                try:
                    results[name] = fut.result()
                except BaseException as exc:  # noqa: BLE001 - reported with the stage's name
                    errors[name] = exc
    return results, errors


def timeline(results: dict) -> dict:
    ran = {k: v for k, v in results.items() if v.get("ran")}
    if not ran:
        return {"stages": {}, "wall_seconds": 0.0, "sum_seconds": 0.0, "saved_seconds": 0.0}
    t0 = min(v["start"] for v in ran.values())
    wall = max(v["end"] for v in ran.values()) - t0
    total = sum(v["seconds"] for v in ran.values())
    stages = {k: {"start": round(v["start"] - t0, 1), "end": round(v["end"] - t0, 1), "seconds": round(v["seconds"], 1),
                  "threads": v["threads"]} for k, v in sorted(ran.items(), key=lambda kv: kv[1]["start"])}
    return {"stages": stages, "wall_seconds": round(wall, 1), "sum_seconds": round(total, 1),
            "saved_seconds": round(total - wall, 1)}


def format_timeline(tl: dict) -> str:
    lines = ["| stage | start s | end s | seconds | threads |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['start']} | {v['end']} | {v['seconds']} | {v['threads']} |" for k, v in tl["stages"].items()]
    lines.append(f"\nWall {tl['wall_seconds']} s for {tl['sum_seconds']} s of stage time: "
                 f"{tl['saved_seconds']} s saved by running stages side by side.")
    return "\n".join(lines)


@flow(name="kdistill-pipeline", log_prints=True)
def distill_pipeline(profile: str = "default"):
    """The pipeline of a profile. A refusal or a failed stage ends the flow run Failed with its one line as the
    message (what the Prefect UI shows), without a traceback; anything unexpected raises as usual."""
    try:
        with pipeline_lock(profile):
            return _run_pipeline(profile)
    except KdistillError as exc:
        return Failed(message=str(exc))


def result_of(state):
    """A flow run's result, for a caller in this process: a Failed state's message becomes the one-line error."""
    try:
        return state.result()
    except FailedRun as exc:
        raise KdistillError(str(exc)) from None


def _run_pipeline(profile: str) -> dict:
    from kdistill.config import load_params

    dvc_file, params_file, out_root = pipeline_file(profile)
    p = load_params(params_file)
    stages = load_pipeline(dvc_file)  # with the default's stages it reads from (shared general students)
    # until this machine has timed its own runs, the reference times shipped for the default profile order them
    prior = ROOT / "pipelines" / "stage_seconds.reference.json"
    seconds = json.loads(prior.read_text()) if profile == "default" and prior.is_file() else {}
    print(f"pipeline {profile}: {len(stages)} stages from {dvc_file.relative_to(ROOT)}")
    shared = sorted(n for n, s in stages.items() if profile != "default" and ":" not in s.target)  # dvc.yaml's
    if shared:
        print(f"  of which {len(shared)} are the default pipeline's (same teacher, corpus and general params: its "
              f"general students are this profile's, computed once): {', '.join(shared)}")
    tl = run_graph(stages, p, f"pipeline-{profile}", ROOT / "work" / out_root.name, seconds,
                   _STATUS_ASKED.pop(profile, None))
    report = _reports(out_root) / "report.md"
    if report.is_file() and tl["stages"]:
        import mlflow
        from prefect.artifacts import create_markdown_artifact

        md = report.read_text() + "\n## Stage times\n\n" + format_timeline(tl) + "\n"
        create_markdown_artifact(key=f"distillation-report-{profile}", markdown=md, description="teacher vs students")
        with mlflow.start_run(run_id=tl["mlflow_run_id"]):
            mlflow.log_text(md, "report.md")
    return tl


def _reports(out_root: Path) -> Path:
    from kdistill.paths import Paths

    return Paths(out_root).reports


def run_graph(stages: dict[str, Stage], p, run_name: str, work_dir: Path, seconds: dict | None = None,
              status: dict | None = None) -> dict:
    """Run a linked stage graph (side by side as it allows) under one parent MLflow run; the timeline, also kept in
    work_dir with each stage's time (which orders the next run's ready stages). Raises the first stage failure.
    `status`: `dvc status` of exactly this graph, asked already under the pipeline lock held now (else asked here)."""
    with stage_zygote.serving(stage_env(None, 1)):
        return _run_graph(stages, p, run_name, work_dir, seconds, status)


def _run_graph(stages: dict[str, Stage], p, run_name: str, work_dir: Path, seconds: dict | None,
               status: dict | None) -> dict:
    import mlflow

    from kdistill.tracking import experiment

    record = DvcRecord()
    cpus = available_cpus() if p.base.threads == "auto" else int(p.base.threads)
    parallel = resolve_parallel(p.base.max_parallel, cpus)
    print(f"{run_name}: {len(stages)} stages, up to {parallel} at once, {cpus} CPU(s)")
    closed = close_orphan_runs(experiment(p))  # experiment() also points MLflow at the tracking store
    if closed:
        print(f"marked {closed} MLflow run(s) of an earlier, killed pipeline as KILLED")
    log_dir = work_dir / "logs"
    known = work_dir / "stage_seconds.json"
    seconds = dict(seconds or {})
    seconds.update(json.loads(known.read_text()) if known.is_file() else {})
    pool = p.schedule.training_pool
    if pool:
        deploy_stage_flow(pool)  # idempotent: the stage deployment follows this project's code
        print(f"training stages go to work pool '{pool}' (deployment {stage_deployment(pool)})")
    plan = stale_plan(stages, record, status)
    current = [n for n, v in plan.items() if v is False]
    if current:
        print(f"{len(current)} of {len(stages)} stages are up to date (DVC) and will be skipped")
    with mlflow.start_run(run_name=run_name) as parent:
        results, errors = schedule(
            stages, parallel, cpus,
            lambda st, threads: run_stage.submit(st, threads, parent.info.run_id, record, log_dir, pool,
                                                 plan[st.name]), seconds)
        tl = timeline(results)
        for name, v in tl["stages"].items():
            mlflow.log_metric(f"stage_seconds/{name.replace('@', '_')}", v["seconds"])
        mlflow.log_metrics({"pipeline/wall_seconds": tl["wall_seconds"], "pipeline/saved_seconds": tl["saved_seconds"]})
        mlflow.log_dict(tl, "timeline.json")
        known.parent.mkdir(parents=True, exist_ok=True)
        (known.parent / "timeline.json").write_text(json.dumps(tl, indent=1))
        known.write_text(json.dumps({**seconds, **{k: v["seconds"] for k, v in tl["stages"].items()}}, indent=1))
        if errors:
            name, exc = next(iter(errors.items()))
            if isinstance(exc, FailedRun):  # a Failed task run: its message is the stage's line
                raise KdistillError(str(exc))
            raise exc if isinstance(exc, KdistillError) else KdistillError(f"stage {name}: {exc!r}")
        print("\n" + format_timeline(tl))
    return {**tl, "mlflow_run_id": parent.info.run_id}


def close_orphan_runs(experiment_name: str) -> int:
    """Runs a killed pipeline left RUNNING are marked KILLED.

    Safe because the caller holds the project's pipeline lock: no other pipeline is running, so every pipeline run
    (a `pipeline-*` parent or a stage run nested under one) still RUNNING belongs to a process that died.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    orphans = [r for r in runs if r.info.run_name.startswith("pipeline-") or "mlflow.parentRunId" in r.data.tags]
    for r in orphans:
        client.set_terminated(r.info.run_id, status="KILLED")
    return len(orphans)


def preflight(profile: str):
    """Seconds, before any Prefect server starts: everything that can be checked without training (the params, the
    data files and every row, the labels against the teacher's head, the teacher's family against the recipes, its
    tokenizer producing tokens: kdistill.validate.check_all, which each stage runs again), the outputs writable, the
    tracking server up. Checks that need the teacher to run stay in their stage. Returns the params file and
    the params it loaded."""
    from kdistill.config import load_params
    from kdistill.tracking import check_tracking
    from kdistill.validate import check_all

    src = ROOT / ("params.yaml" if profile == "default" else f"profiles/{profile}.yaml")
    if not src.is_file():
        pipeline_file(profile)  # raises the error that lists the profiles
    p = load_params(src)
    if profile == "default":
        check_default(p)
    if p.schedule.training_pool and not os.environ.get("PREFECT_API_URL"):
        raise KdistillError(
            f"{src.relative_to(ROOT)}: key 'schedule.training_pool' ({p.schedule.training_pool!r}) sends training stages "
            "to a work pool, which needs a Prefect server and a worker: run the flow through `make schedule` + `make "
            f"worker` (or with PREFECT_API_URL set) with `make worker POOL={p.schedule.training_pool}` running, or set "
            "it to null")
    try:
        check_all(p, ROOT)
    except KdistillError as exc:  # the checks name the key as in params.yaml; a profile's user wrote another file
        if profile == "default" or not str(exc).startswith("params.yaml: "):
            raise
        raise KdistillError(f"{src.relative_to(ROOT)}: {str(exc).removeprefix('params.yaml: ')}") from None
    check_writable(ROOT / ("outputs" if profile == "default" else f"outputs-{profile}"))
    check_tracking(p)
    return src, p


def check_writable(out_root: Path) -> None:
    """The outputs root can be created and written: not under a file, and its nearest existing folder writable."""
    from kdistill.io import check_dir_target

    check_dir_target(out_root)
    existing = next(d for d in (out_root, *out_root.parents) if d.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise KdistillError(f"{existing}: not writable by this user, so {out_root} cannot be written; "
                            "fix its permissions, or run from a copy of the project you own")


# profile -> the `dvc status` that main() asked under the pipeline lock, for the flow it then starts in this process
# (still under that lock): one `dvc` process less per run
_STATUS_ASKED: dict[str, dict] = {}


def up_to_date(profile: str) -> bool:
    """Ask DVC whether anything is stale (writes the profile's generated pipeline first)."""
    dvc_file, _, _ = pipeline_file(profile)
    # --with-deps: also the default pipeline's stages that a profile sharing its general students reads from
    _STATUS_ASKED[profile] = DvcRecord().status(str(dvc_file.relative_to(ROOT)), with_deps=True)
    return not _STATUS_ASKED[profile]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default", help="default (params.yaml) or the name of a file in profiles/")
    args = ap.parse_args()
    t0 = time.time()

    def run() -> None:
        preflight(args.profile)
        with pipeline_lock(args.profile):
            if up_to_date(args.profile):
                print(f"pipeline ({args.profile}): dvc status says every stage is up to date; nothing to run "
                      f"({time.time() - t0:.1f}s)")
                return
            with stage_zygote.early(stage_env(None, 1)):
                result_of(distill_pipeline(args.profile, return_state=True))
        print(f"pipeline ({args.profile}) finished in {time.time() - t0:.1f}s")

    exit_on_error(run)


def exit_on_error(run) -> None:
    """Run a flow entry point; a deliberate error (bad params, a failed stage, DVC's refusal) ends it with one line,
    printed last, and exit status 2."""
    # Prefect stops its temporary server in an exit handler that logs a line; handlers run last-registered first, so
    # one registered now, before any server starts, prints the error after everything else
    pending: list[str] = []
    atexit.register(lambda: pending and print(f"error: {pending[0]}", file=sys.stderr, flush=True))
    try:
        run()
    except KdistillError as exc:
        if os.environ.get("KDISTILL_DEBUG") == "1":
            raise
        pending.append(str(exc))
        sys.exit(2)


if __name__ == "__main__":
    main()
