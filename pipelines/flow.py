"""The distillation pipeline as a Prefect flow: one task per DVC stage, run through DVC so DVC alone decides
what is stale. One parent MLflow run per flow run; each stage's run nests under it (KDISTILL_PARENT_RUN_ID).

`python -m pipelines.flow` (make pipeline) or `python -m pipelines.flow --profile NAME`: the same steps with
profiles/NAME.yaml, run directly into outputs-NAME/ without DVC (make smoke: a few rows and tiny budgets).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

ROOT = Path(__file__).resolve().parent.parent
STAGES = [
    ("prepare", "prepare"),
    ("augment", "augment"),
    ("teacher_finetune", "teacher_finetune"),
    ("general_distill@tinybert", "general_distill tinybert"),
    ("general_distill@distilbert", "general_distill distilbert"),
    ("task_distill@tinybert", "task_distill tinybert"),
    ("task_distill@distilbert", "task_distill distilbert"),
    ("baseline@tinybert", "task_distill baseline-tinybert"),
    ("baseline@distilbert", "task_distill baseline-distilbert"),
    ("evaluate", "evaluate"),
]


def _env(parent_run_id: str | None, extra: dict | None = None) -> dict:
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true", **os.environ}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    if parent_run_id:
        env["KDISTILL_PARENT_RUN_ID"] = parent_run_id
    return {**env, **(extra or {})}


@task(retries=1, retry_delay_seconds=5, cache_policy=None)
def run_stage(stage: str, module_args: str, parent_run_id: str | None, use_dvc: bool, extra_env: dict | None = None) -> float:
    """One DVC stage (`dvc repro --single-item`): DVC skips it when nothing it depends on changed."""
    log = get_run_logger()
    if use_dvc:
        cmd = [str(ROOT / ".venv" / "bin" / "dvc"), "repro", "--single-item", stage]
    else:
        mod, *args = module_args.split()
        cmd = [sys.executable, "-m", f"tasks.{mod}", *args]
    t0 = time.time()
    log.info("running %s", " ".join(cmd))
    # Stream the stage's output (progress bars included) to this terminal; keep the tail for the Prefect log.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(parent_run_id, extra_env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail: list[str] = []
    for line in proc.stdout:
        sys.stdout.write(line)
        tail = (tail + [line.rstrip()])[-15:]
    rc = proc.wait()
    dt = time.time() - t0
    if rc:
        raise RuntimeError(f"stage {stage} failed (exit {rc}):\n" + "\n".join(tail))
    log.info("%s done in %.1fs\n%s", stage, dt, "\n".join(tail))
    return dt


@task(cache_policy=None)
def stale_stages() -> dict:
    """`dvc status`: what DVC would re-run ({} when everything is up to date)."""
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "dvc"), "status", "--json"], cwd=ROOT, env=_env(None),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out or "{}")


@flow(name="kdistill-pipeline", log_prints=True)
def distill_pipeline(profile: str = "default") -> dict:
    from kdistill.config import load_params
    from tasks.common import Paths, experiment, tracking_uri

    import mlflow

    # "default": params.yaml through DVC. Any other profile: profiles/<name>.yaml, run directly into outputs-<name>/.
    smoke = profile != "default"
    params_file = ROOT / (f"profiles/{profile}.yaml" if smoke else "params.yaml")
    p = load_params(params_file)  # validate before anything runs
    out_root = ROOT / f"outputs-{profile}"
    extra = {"KDISTILL_PARAMS": str(params_file), "KDISTILL_OUTPUTS": str(out_root)} if smoke else {}
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(tracking_uri(p))
    experiment(p)
    times = {}
    if not smoke and not stale_stages():
        print("dvc status: every stage is up to date; nothing to run")
        return {}
    with mlflow.start_run(run_name=f"pipeline-{profile}") as parent:
        for stage, module_args in STAGES:
            times[stage] = run_stage(stage, module_args, parent.info.run_id, use_dvc=not smoke, extra_env=extra)
            mlflow.log_metric(f"stage_seconds/{stage.replace('@', '_')}", times[stage])
        paths = Paths(out_root) if smoke else Paths(ROOT / "outputs")
        report = paths.reports / "report.md"
        if report.is_file():
            md = report.read_text()
            md += "\n## Stage times (s)\n\n" + "\n".join(f"- {k}: {v:.1f}" for k, v in times.items()) + "\n"
            create_markdown_artifact(key="distillation-report", markdown=md, description="teacher vs students")
            mlflow.log_text(md, "report.md")
    print(json.dumps(times, indent=1))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="default",
                    help="default (params.yaml via DVC) or the name of a file in profiles/ (run directly, no DVC)")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    t0 = time.time()
    distill_pipeline(args.profile)
    print(f"pipeline ({args.profile}) finished in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
