"""`make schedule`: serve the pipeline as a Prefect deployment with the cron schedule from params.yaml.

It registers the deployment with the Prefect API (the local server from `make ui` by default, so it appears in the
UI at http://127.0.0.1:4200) and then keeps running, starting flow runs when the schedule comes due. Stop with Ctrl-C.
"""

from __future__ import annotations

import os
import sys
import urllib.request

from kdistill.config import load_params

from .flow import ROOT, distill_pipeline

DEFAULT_API = f"http://127.0.0.1:{os.environ.get('KDISTILL_PREFECT_PORT', '4200')}/api"  # `make ui`'s server


def build_deployment(profile: str = "default"):
    """The deployment object (flow + cron from params.yaml), ready to `.apply()` or to serve."""
    p = load_params(ROOT / "params.yaml")
    return distill_pipeline.to_deployment(
        name=p.schedule.deployment,
        cron=p.schedule.cron,
        parameters={"profile": profile},
        description=f"kdistill pipeline ({profile}), cron '{p.schedule.cron}' from params.yaml",
        tags=["kdistill", p.base.task],
    )


def api_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def main() -> None:
    if not os.environ.get("PREFECT_API_URL"):
        # Prefect read its settings when .flow imported it, with no API URL: it would poll a temporary server of its
        # own, not the UI's. Start again with the URL set, so runs triggered in the UI are the ones this executes.
        os.environ["PREFECT_API_URL"] = DEFAULT_API
        os.execv(sys.executable, [sys.executable, "-m", "pipelines.schedule", *sys.argv[1:]])
    api = os.environ["PREFECT_API_URL"]
    if not api_healthy(api):
        sys.exit(f"no Prefect server answers at {api}: start one with `make ui` (or set PREFECT_API_URL)")
    from prefect import serve

    dep = build_deployment(os.environ.get("KDISTILL_PROFILE", "default"))
    print(f"serving deployment 'kdistill-pipeline/{dep.name}' on {api} with schedule {dep.schedules}")
    serve(dep)


if __name__ == "__main__":
    main()
