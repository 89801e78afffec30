"""`make worker`: a Prefect process worker for the pool of params.yaml (`schedule.work_pool`), polling the server of
`make ui` (or PREFECT_API_URL). It executes the deployment's scheduled runs and those triggered from the UI, one at a
time (the pipeline takes the whole machine and holds the project's lock). Stop with Ctrl-C."""

from __future__ import annotations

import os
import sys

from kdistill.config import load_params

from .flow import ROOT
from .schedule import ensure_work_pool, with_api_url


def main() -> None:
    api = with_api_url("pipelines.worker")
    pool = load_params(ROOT / "params.yaml").schedule.work_pool
    ensure_work_pool(pool)
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    print(f"worker for pool '{pool}' on {api}", flush=True)
    os.execv(prefect, [prefect, "worker", "start", "--pool", pool, "--type", "process", "--limit", "1"])


if __name__ == "__main__":
    main()
