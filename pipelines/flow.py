"""The distillation pipeline as a Prefect flow: one task per DVC stage, run through DVC so DVC alone decides
what is stale. One parent MLflow run per flow run; each stage's run nests under it (KDISTILL_PARENT_RUN_ID).

`python -m pipelines.flow` (make pipeline) or `python -m pipelines.flow --profile smoke` (make smoke: the same
steps on a few rows, run directly with the smoke params into outputs-smoke/, no DVC).
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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
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
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(parent_run_id, extra_env), text=True, capture_output=True)
    dt = time.time() - t0
    tail = "\n".join(proc.stdout.splitlines()[-15:])
    if proc.returncode:
        raise RuntimeError(f"stage {stage} failed ({proc.returncode}):\n{tail}\n{proc.stderr[-3000:]}")
    log.info("%s done in %.1fs\n%s", stage, dt, tail)
    return dt


@flow(name="kdistill-pipeline", log_prints=True)
def distill_pipeline(profile: str = "default") -> dict:
    from kdistill.config import load_params
    from tasks.common import Paths, experiment, tracking_uri

    import mlflow

    smoke = profile == "smoke"
    params_file = ROOT / ("profiles/smoke.yaml" if smoke else "params.yaml")
    p = load_params(params_file)  # validate before anything runs
    extra = {"KDISTILL_PARAMS": str(params_file), "KDISTILL_OUTPUTS": str(ROOT / "outputs-smoke")} if smoke else {}
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(tracking_uri(p))
    experiment(p)
    times = {}
    with mlflow.start_run(run_name=f"pipeline-{profile}") as parent:
        for stage, module_args in STAGES:
            times[stage] = run_stage(stage, module_args, parent.info.run_id, use_dvc=not smoke, extra_env=extra)
            mlflow.log_metric(f"stage_seconds/{stage.replace('@', '_')}", times[stage])
        paths = Paths(ROOT / "outputs-smoke") if smoke else Paths(ROOT / "outputs")
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
    ap.add_argument("--profile", choices=["default", "smoke"], default="default")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    t0 = time.time()
    distill_pipeline(args.profile)
    print(f"pipeline ({args.profile}) finished in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
