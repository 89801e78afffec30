"""Open the Prefect and MLflow UIs in headless Chromium and check what a user looks for there.

- Prefect: the scheduled deployment, its flow, and its cron as the UI's schedule editor shows it.
- MLflow: the registered students with the `champion` alias, and the per-component loss charts of a run.

`make ui-screenshots` (with `make ui` and `make schedule` running) checks the project's own servers and store and writes
the screenshots the README shows into docs/ui/. tests/test_ui_browser.py runs the same checks against throw-away servers.
Chromium comes from Debian's `chromium` package (`make setup` installs it); Playwright drives it, nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
VIEWPORT = {"width": 1400, "height": 1000}


class UICheckError(AssertionError):
    pass


def find_chromium() -> str | None:
    env = os.environ.get("KDISTILL_CHROMIUM")
    for c in (env, *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def launch(playwright):
    exe = find_chromium()
    if exe is None:
        raise UICheckError("no Chromium found (install Debian's `chromium` package, or set KDISTILL_CHROMIUM)")
    # --no-sandbox: CI and these machines run as root, where Chromium's sandbox refuses to start
    return playwright.chromium.launch(executable_path=exe, args=["--no-sandbox"])


def _expect_text(page, text: str | re.Pattern, where: str, timeout_ms: int = 30_000) -> None:
    try:
        page.get_by_text(text, exact=False).filter(visible=True).first.wait_for(timeout=timeout_ms)
    except Exception as exc:  # noqa: BLE001 - Playwright's timeout: say what was missing where
        shown = text.pattern if isinstance(text, re.Pattern) else text
        raise UICheckError(f"{where}: '{shown}' not shown within {timeout_ms / 1000:.0f} s ({page.url})") from exc


def _tidy_mlflow(page) -> None:
    """Close what MLflow opens over its pages on a first visit (a what's-new dialog, the assistant panel)."""
    page.wait_for_timeout(1000)
    if page.get_by_role("dialog").count():
        page.keyboard.press("Escape")
    close = page.get_by_text("MLflow Assistant").first.locator("xpath=..").get_by_role("button", name="Close")
    if close.count():
        close.first.click()
    page.wait_for_timeout(500)


def check_prefect(page, url: str, deployment: str, flow: str, cron: str, shot: Path | None = None) -> None:
    """The deployment is listed with its flow; its schedule editor holds the cron from params.yaml."""
    page.goto(f"{url}/deployments")
    _expect_text(page, deployment, "Prefect deployments page")
    _expect_text(page, flow, "Prefect deployments page")
    if shot:
        page.screenshot(path=str(shot / "prefect-deployments.png"))
    page.get_by_text(deployment, exact=True).first.click()
    _expect_text(page, "Entrypoint", "Prefect deployment page")
    card = page.locator(".deployment-schedule-card").first
    try:
        card.wait_for(timeout=10_000)
    except Exception as exc:  # noqa: BLE001
        raise UICheckError(f"Prefect deployment page shows no schedule ({page.url})") from exc
    if shot:
        page.screenshot(path=str(shot / "prefect-deployment.png"))
    # the schedule's own menu -> Edit: the editor holds the cron expression itself (the card shows it in words)
    card.locator(".deployment-schedule__menu button").click()
    page.get_by_text("Edit", exact=True).first.click()
    values: list[str] = []
    for _ in range(20):
        values = [i.input_value() for i in page.locator("input").all()]
        if cron in values:
            break
        page.wait_for_timeout(500)
    else:
        raise UICheckError(f"Prefect schedule editor of '{card.inner_text()}' shows {values}, "
                           f"not the cron '{cron}' from params.yaml")
    page.keyboard.press("Escape")


def check_mlflow_registry(page, url: str, models: list[str], alias: str = "champion", shot: Path | None = None) -> None:
    """Every model is listed in the registry and its page shows the alias on a version."""
    page.goto(f"{url}/#/models")
    for m in models:
        _expect_text(page, m, "MLflow registered models page")
    _expect_text(page, re.compile(rf"@\s{alias}"), "MLflow registered models page")  # '@' and a no-break space
    _tidy_mlflow(page)
    if shot:
        page.screenshot(path=str(shot / "mlflow-models.png"))
    for m in models:
        page.goto("about:blank")  # a full load: MLflow 3.17 shows no versions after an in-app hop between models
        page.goto(f"{url}/#/models/{m}")
        _expect_text(page, "Registered at", f"MLflow model page of {m}")  # its versions table
        _expect_text(page, re.compile(rf"@\s{alias}"), f"MLflow model page of {m}")


def check_mlflow_run(page, url: str, experiment_id: str, run_id: str, run_name: str, components: list[str],
                     shot: Path | None = None) -> None:
    """The run's metric page draws one chart per loss component (`loss/<name>`)."""
    page.set_viewport_size({"width": VIEWPORT["width"], "height": 1800})  # charts render only when on screen
    page.goto("about:blank")
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics")
    _expect_text(page, run_name, "MLflow run page")
    for c in components:
        _expect_text(page, f"{run_name} (loss/{c})", "MLflow run metrics (a loss component's chart)")
    _tidy_mlflow(page)
    if shot:
        page.screenshot(path=str(shot / "mlflow-run-losses.png"))
    page.set_viewport_size(VIEWPORT)


def _latest_run(tracking_uri: str, run_name: str):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.runName = '{run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if runs.empty:
        raise UICheckError(f"no MLflow run named {run_name} in {tracking_uri}: run `make pipeline` first")
    row = runs.iloc[0]
    comps = sorted(c.removeprefix("metrics.loss/") for c in runs.columns
                   if c.startswith("metrics.loss/") and row[c] == row[c])  # NaN: a column of another run
    return row.experiment_id, row.run_id, comps


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from kdistill.config import load_params

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefect", default="http://127.0.0.1:4200")
    ap.add_argument("--mlflow", default="http://127.0.0.1:5000")
    ap.add_argument("--store", default="sqlite:///mlflow.db", help="the MLflow store behind --mlflow")
    ap.add_argument("--run", default="task_distill@tinybert", help="the run whose loss charts are checked")
    ap.add_argument("--out", default="docs/ui", help="screenshots go here")
    a = ap.parse_args()
    p = load_params("params.yaml")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    exp, run, comps = _latest_run(a.store, a.run)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport=VIEWPORT)
        check_prefect(page, a.prefect, p.schedule.deployment, "kdistill-pipeline", p.schedule.cron, out)
        check_mlflow_registry(page, a.mlflow, [f"{p.tracking.registry_prefix}{p.base.task}-{r}" for r in p.base.recipes], shot=out)
        check_mlflow_run(page, a.mlflow, exp, run, a.run, comps, out)
        browser.close()
    print(f"Prefect and MLflow UIs checked; screenshots in {out}/")


if __name__ == "__main__":
    main()
