"""`make worker`: a Prefect process worker for the pool of params.yaml (`schedule.work_pool`), polling the server of
`make ui` (or PREFECT_API_URL). It executes the deployment's scheduled runs and those triggered from the UI, one at a
time (the pipeline takes the whole machine and holds the project's lock). `--pool NAME` (`make worker POOL=NAME`)
serves another pool instead, e.g. `schedule.training_pool`, whose runs are single training stages. Stop with Ctrl-C."""

from __future__ import annotations

import argparse
import os
import sys

from kdistill.config import load_params

from .flow import ROOT
from .schedule import with_api_url
from .work_pool import ensure_work_pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pool", help="the work pool to serve (default: schedule.work_pool of params.yaml)")
    args = ap.parse_args()
    api = with_api_url("pipelines.worker")
    pool = args.pool or load_params(ROOT / "params.yaml").schedule.work_pool
    ensure_work_pool(pool)
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    print(f"worker for pool '{pool}' on {api}", flush=True)
    os.execv(prefect, [prefect, "worker", "start", "--pool", pool, "--type", "process", "--limit", "1"])


if __name__ == "__main__":
    main()
