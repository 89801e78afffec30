"""Training stages on a work pool of their own (`schedule.training_pool`), e.g. one whose workers have GPUs.

The flow still decides and records every stage with DVC where it runs (`dvc status` before, `dvc commit` after);
only a training stage's command moves: it becomes a flow run of the deployment `kdistill-stage/<pool>`, executed by
a worker of that pool (`make worker POOL=<pool>`) and shown in the Prefect UI as a subflow of the pipeline run. The
machines share the project directory (same path, a shared file system), so the command reads and writes the same
outputs/ and work/ as the flow, and its threads are the worker machine's own.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow

from .stage_exec import StageFailed, run_command
from .stage_graph import ROOT
from .work_pool import ensure_work_pool

TRAINING_STAGES = ("teacher_finetune", "teacher_mlm", "general_distill@", "task_distill@", "baseline@", "init_control@")
ENTRYPOINT = "pipelines/remote_stage.py:stage_command"
# what the flow passes on to the stage; never the flow's whole environment (its secrets would be stored by Prefect)
FORWARDED_ENV = ("KDISTILL_PARENT_RUN_ID", "KDISTILL_NPROC")


def is_training(stage_name: str) -> bool:
    return stage_name.startswith(TRAINING_STAGES)


def stage_deployment(pool: str) -> str:
    return f"kdistill-stage/{pool}"


@flow(name="kdistill-stage", flow_run_name="{stage}", log_prints=True)
def stage_command(stage: str, cmd: str, wdir: str, log_file: str, env: dict[str, str]) -> None:
    """One stage's command on the worker's machine (its output in the worker's log and the stage's log file)."""
    full = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
            **os.environ, **env}
    full["PATH"] = f"{ROOT / '.venv' / 'bin'}:{full.get('PATH', '')}"
    full.pop("KDISTILL_THREADS", None)  # `auto` is this machine's CPUs
    run_command(stage, cmd, wdir, full, Path(log_file))


def deploy_stage_flow(pool: str):
    """Register (or update) the stage deployment on `pool`, code from this project directory."""
    ensure_work_pool(pool)
    source = stage_command.from_source(source=str(ROOT), entrypoint=ENTRYPOINT)
    return source.deploy(name=pool, work_pool_name=pool, print_next_steps=False, tags=["kdistill", "training"],
                         description=f"kdistill training stages sent by the pipeline flow to work pool '{pool}'")


def run_on_pool(pool: str, stage, parent_run_id: str | None, log_file: Path) -> None:
    """Run `stage`'s command as a flow run on `pool` and wait for it; StageFailed when it does not complete."""
    from prefect.deployments import run_deployment

    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if parent_run_id:
        env["KDISTILL_PARENT_RUN_ID"] = parent_run_id
    # asks the server for the run's state every 2 s (Prefect's default: 5): a short stage is not kept waiting
    run = run_deployment(stage_deployment(pool), timeout=None, as_subflow=True, poll_interval=2,
                         parameters={"stage": stage.name, "cmd": stage.cmd, "wdir": str(stage.wdir),
                                     "log_file": str(log_file), "env": env})
    if not run.state.is_completed():
        raise StageFailed(f"stage {stage.name} did not complete on work pool '{pool}' ({run.state.type.value}): "
                          f"{run.state.message or 'see the worker log'} (full log: {log_file})")
