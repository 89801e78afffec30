"""`make schedule`: the pipeline as a Prefect deployment on a work pool, with the cron schedule from params.yaml.

It registers the deployment with the Prefect API (the server of `make ui` by default, so it appears in the UI at
http://127.0.0.1:4200) on the process work pool `schedule.work_pool`, creating the pool when missing, and returns.
Scheduled runs, and runs triggered from the UI, are executed by whichever worker polls that pool: `make worker`, on
this machine or any other that has the project at the same path and reaches the server.
"""

from __future__ import annotations

import os
import sys
import urllib.request

from kdistill.config import load_params

from .flow import ROOT, distill_pipeline
from .work_pool import ensure_work_pool

DEFAULT_API = f"http://127.0.0.1:{os.environ.get('KDISTILL_PREFECT_PORT', '4200')}/api"  # `make ui`'s server
ENTRYPOINT = "pipelines/flow.py:distill_pipeline"


def deployment_settings(profile: str = "default") -> dict:
    p = load_params(ROOT / "params.yaml")
    return dict(name=p.schedule.deployment, cron=p.schedule.cron, parameters={"profile": profile},
                description=f"kdistill pipeline ({profile}), cron '{p.schedule.cron}' from params.yaml",
                tags=["kdistill", p.base.task])


def build_deployment(profile: str = "default"):
    """The deployment object (flow + cron from params.yaml), ready to `.apply()` or to serve in-process."""
    return distill_pipeline.to_deployment(**deployment_settings(profile))


def deploy(profile: str = "default"):
    """Register the deployment on the work pool: code from this project directory, run by a worker of the pool."""
    p = load_params(ROOT / "params.yaml")
    ensure_work_pool(p.schedule.work_pool)
    source = distill_pipeline.from_source(source=str(ROOT), entrypoint=ENTRYPOINT)
    return source.deploy(work_pool_name=p.schedule.work_pool, print_next_steps=False, **deployment_settings(profile))


def api_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def with_api_url(module: str) -> str:
    """The API URL, after making sure Prefect sees it: Prefect reads its settings once, when first imported, so a
    process started without PREFECT_API_URL would talk to a temporary server of its own, not the UI's; start again."""
    if not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_API_URL"] = DEFAULT_API
        os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])
    api = os.environ["PREFECT_API_URL"]
    if not api_healthy(api):
        sys.exit(f"error: no Prefect server answers at {api}: start one with `make ui` (or set PREFECT_API_URL)")
    return api


def main() -> None:
    api = with_api_url("pipelines.schedule")
    profile = os.environ.get("KDISTILL_PROFILE", "default")
    p = load_params(ROOT / "params.yaml")
    dep_id = deploy(profile)
    print(f"deployment 'kdistill-pipeline/{p.schedule.deployment}' ({dep_id}) on {api}: cron '{p.schedule.cron}', "
          f"profile {profile}, work pool '{p.schedule.work_pool}'. Runs start when a worker polls the pool: "
          "`make worker` (here, or on any machine with this project at the same path)")


if __name__ == "__main__":
    main()
