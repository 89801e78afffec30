"""`make smoke` end to end: the Prefect flow runs the smoke profile as its own DVC pipeline, stages side by side.

Runs in a copy of the project (a fresh git repo beside the real one, sharing .venv and .assets), so it neither
reads nor touches the developer's outputs, locks or MLflow store.
"""

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdistill.recipes import RECIPES
from pipelines.schedule import api_healthy

from .conftest import ROOT, SECRET, flow_env, free_port, run_flow

# prepare, augment, teacher_finetune, teacher_mlm, evaluate, export; general, task and baseline per recipe
STAGES = 6 + 3 * len(RECIPES)


@pytest.fixture
def project(smoke_project):
    """The project copy every end-to-end test shares (conftest.smoke_project); `smoke_run` has run the profile in it."""
    return smoke_project


@pytest.mark.slow
def test_smoke_profile_through_prefect_and_dvc(project, smoke_run):
    proc, _ = smoke_run
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    out = project / "outputs-smoke"

    # no credential from the environment was written anywhere the run leaves records or logs
    stores = [project / "mlflow.db", project / ".prefect", project / "runs", project / "work",
              project / "outputs-smoke", project / "mlruns", project / "mlartifacts"]
    files = [f for s in stores for f in ([s] if s.is_file() else s.rglob("*")) if f.is_file()]
    assert len(files) > 50 and not [f for f in files if SECRET.encode() in f.read_bytes()]
    assert SECRET not in proc.stdout + proc.stderr
    assert "stage commands fork from the stage server: ready" in proc.stdout + proc.stderr

    # every model evaluated and reported
    summary = json.loads((out / "reports" / "summary.json").read_text())
    recipes = tuple(RECIPES)
    assert set(summary["models"]) == {"teacher", *recipes, *(f"baseline-{r}" for r in recipes)}
    assert summary["precision"] in ("fp32", "bf16") and summary["cpu_capability"]
    for name, m in summary["models"].items():
        assert m["retention"] == pytest.approx(m["score"] / summary["models"]["teacher"]["score"])
    assert summary["models"]["tinybert"]["params"] < summary["models"]["distilbert"]["params"] < summary["models"]["teacher"]["params"]
    tiny = (out / "reports" / "losses" / "task_distill_tinybert.csv").read_text().splitlines()[0]
    assert all(c in tiny for c in ("emb", "hidn", "attn", "pred"))
    assert "precision" in (out / "reports" / "report.md").read_text()
    assert "precision" in (out / "students" / "tinybert" / "README.md").read_text()
    mobile = (out / "reports" / "losses" / "general_distill_mobilebert.csv").read_text().splitlines()[0].split(",")
    assert {"l1_fmt", "l1_at", "l6_fmt", "l6_at", "mlm", "kd", "fmt", "at"} <= set(mobile)  # per-block curves, then joint
    assert summary["models"]["mobilebert"]["flops_ratio"] < 1

    # every student and the teacher exported; fp32 ONNX passed parity over the whole dev split; int8 measured
    deploy = json.loads((out / "reports" / "deploy.json").read_text())
    assert set(deploy["models"]) == {"teacher", *recipes}
    for name, row in deploy["models"].items():
        assert row["onnx-fp32"]["max_abs_logit_diff"] <= deploy["parity_atol"] and row["onnx-fp32"]["labels_differing"] == 0
        assert "metric_drop" in row["onnx-int8"] and (out / "onnx" / name / "model.int8.onnx").is_file()
    assert {f"{n}/{v}" for n in deploy["models"] for v in ("onnx-fp32", "onnx-int8")} <= set(deploy["timing"]["bs1_seq32"])
    assert set(deploy["speedups"]) == set(recipes)
    card = (out / "onnx" / "tinybert" / "README.md").read_text()
    assert "ONNX Runtime alone" in card and "runs **" not in card  # no timing-decided choice in a cached output
    assert "onnx-int8" in (out / "reports" / "deploy.md").read_text()

    # independent stages really ran side by side (start/end stamps the flow took around each stage)
    tl = json.loads((project / "work" / "outputs-smoke" / "timeline.json").read_text())["stages"]
    assert len(tl) == STAGES
    spans = list(tl.items())
    overlaps = [(a, b) for i, (a, x) in enumerate(spans) for b, y in spans[i + 1:]
                if x["start"] < y["end"] and y["start"] < x["end"]]
    assert overlaps, tl
    assert tl["evaluate"]["start"] >= max(v["end"] for k, v in tl.items() if k not in ("evaluate", "export"))
    assert tl["export"]["start"] >= tl["evaluate"]["end"]

    # DVC is the record: the profile's lock holds every stage, and `dvc status` is clean
    lock = yaml.safe_load((project / "runs" / "smoke" / "dvc.lock").read_text())["stages"]
    assert len(lock) == STAGES
    dvc = str(project / ".venv" / "bin" / "dvc")
    st = subprocess.run([dvc, "status", "--json"], cwd=project, capture_output=True, text=True, check=True).stdout
    assert json.loads(st or "{}") == {} or all(not k.startswith("runs/smoke") for k in json.loads(st))
    st = subprocess.run([dvc, "status", "--json", "runs/smoke/dvc.yaml"], cwd=project, capture_output=True, text=True,
                        check=True).stdout
    assert json.loads(st or "{}") == {}

    # smoke students are registered under their own names, never as versions of the real models
    with sqlite3.connect(project / "mlflow.db") as db:
        names = {r[0] for r in db.execute("select name from registered_models")}
    assert {f"smoke-sst2-{r}" for r in recipes} <= names
    assert not names & {f"sst2-{r}" for r in recipes}
    # checkpoints are chosen on the held-out train rows (val/), the dev split is scored once, at the end (dev/)
    with sqlite3.connect(project / "mlflow.db") as db:
        keys = {(r[0], r[1]) for r in db.execute("select runs.name, metrics.key from metrics join runs "
                                                  "on runs.run_uuid = metrics.run_uuid")}
    for stage in ("teacher_finetune", "task_distill@tinybert", "baseline@distilbert"):
        assert {(stage, "val/accuracy"), (stage, "dev/accuracy")} <= keys, stage
    with sqlite3.connect(project / "mlflow.db") as db:
        dev_points = db.execute("select count(*) from metrics join runs on runs.run_uuid = metrics.run_uuid "
                                "where runs.name = 'teacher_finetune' and metrics.key = 'dev/accuracy'").fetchone()[0]
    assert dev_points == 1
    # the champion is the pyfunc over the registered ONNX variant: text in, labels out
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    preds = mlflow.pyfunc.load_model("models:/smoke-sst2-tinybert@champion").predict(["a good movie", "a dull plot"])
    assert list(preds.columns) == ["label", "probability"] and len(preds) == 2
    assert set(preds["label"]) <= {"negative", "positive"}  # the task's label names

    # a second run with nothing changed skips every stage on DVC's word, before any Prefect server starts
    again = run_flow(project, "--profile", "smoke")
    assert again.returncode == 0 and "every stage is up to date" in again.stdout
    assert "Starting temporary server" not in again.stdout + again.stderr

    # one task-distillation parameter changed: only that stage and evaluate are stale
    prof = project / "profiles" / "smoke.yaml"
    text = prof.read_text()
    changed = text.replace("distilbert:\n    optim: {batch_size: 16, max_steps: 3}", "distilbert:\n    optim: {batch_size: 16, max_steps: 4}")
    assert changed != text
    regenerate = [sys.executable, "-c", "from pipelines.stage_graph import profile_pipeline; profile_pipeline('smoke')"]
    prof.write_text(changed)
    try:
        gen = subprocess.run(regenerate, cwd=project, capture_output=True, text=True)
        assert gen.returncode == 0, gen.stderr
        st = subprocess.run([dvc, "status", "--json", "runs/smoke/dvc.yaml"], cwd=project, capture_output=True,
                            text=True, check=True).stdout
        assert set(json.loads(st)) == {"runs/smoke/dvc.yaml:task_distill@distilbert"}  # evaluate follows once it re-ran
    finally:  # the tests below use this run as it was
        prof.write_text(text)
        subprocess.run(regenerate, cwd=project, capture_output=True, text=True, check=True)


# the TinyBERT-style task distillation and the stages that read its output, with what each writes under outputs-smoke/
FROM_TASK_TINYBERT = {"task_distill@tinybert": ["students/tinybert"],
                      "evaluate": ["reports/summary.json", "reports/report.md"], "export": ["onnx", "reports/deploy.json"]}


def _copy_forgetting(project, dst, stages: dict):
    """A copy of the finished project in which `stages` never ran: their outputs, work folders and dvc.lock entries
    removed."""
    from dvc.utils.serialize import dump_yaml, load_yaml  # DVC's own YAML: the params in the lock keep their types

    subprocess.run(["cp", "-a", str(project), str(dst)], check=True)
    for name, outs in stages.items():
        for o in outs:
            p = dst / "outputs-smoke" / o
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        shutil.rmtree(dst / "work" / "outputs-smoke" / name.replace("@", "_"), ignore_errors=True)
    lock_file = dst / "runs" / "smoke" / "dvc.lock"
    lock = load_yaml(lock_file)
    for name in stages:
        del lock["stages"][name]
    dump_yaml(lock_file, lock)
    return dst


@pytest.mark.slow
def test_kill_9_inside_a_training_stage_and_between_stages_then_a_rerun_ends_as_if_uninterrupted(smoke_pristine,
                                                                                                smoke_run, tmp_path):
    """The finished run copied, with the TinyBERT-style task distillation (two phases, a teacher cache) and what
    follows it forgotten (outputs, work folders, lock entries): killed twice on the way, the pipeline then ends with
    the bytes the uninterrupted run ended with."""
    base, weights = smoke_run
    assert base.returncode == 0 and weights, "the uninterrupted run failed: see test_smoke_profile_through_prefect_and_dvc"
    project = _copy_forgetting(smoke_pristine, tmp_path / "proj", FROM_TASK_TINYBERT)
    ckpt = project / "work" / "outputs-smoke" / "task_distill_tinybert" / "intermediate" / "state.pt"

    # 1. SIGKILL inside the stage, once the first checkpoint of its intermediate phase (12 steps, one every 2) is on
    # disk (renamed into place whole: a half-written one would be in a temporary folder)
    proc = _start_flow(project)
    _until(ckpt.is_file, proc, what="a task-distillation checkpoint")
    _kill_everything(proc, project)
    assert "task_distill@tinybert" not in _recorded(project)  # killed mid-stage, nothing recorded for it

    # 2. SIGKILL between stages: the moment task_distill@tinybert is recorded in dvc.lock
    proc = _start_flow(project)
    _until(lambda: "task_distill@tinybert" in _recorded(project), proc, what="task_distill@tinybert in dvc.lock",
           every=0.2)  # evaluate, which comes next, takes far longer than that
    _kill_everything(proc, project)
    log = (project / "work" / "outputs-smoke" / "logs" / "task_distill_tinybert.log").read_text()
    assert "resumed from step" in log  # the second run went on from the first one's checkpoint
    assert "evaluate" not in _recorded(project)

    # 3. run again: it completes, and ends where the uninterrupted run ended
    again = run_flow(project, "--profile", "smoke")
    assert again.returncode == 0, f"{again.stdout[-3000:]}\n{again.stderr[-3000:]}"
    assert "as KILLED" in again.stdout + again.stderr  # the runs the second, killed run left RUNNING
    assert len(_recorded(project)) == STAGES
    for recipe, want in weights.items():
        got = load_file(project / "outputs-smoke" / "students" / recipe / "model.safetensors")
        assert got.keys() == want.keys()
        # same seeds, data order, step counts and threads (fixed per stage, whatever was left to do): the same bits
        assert all(torch.equal(got[k], want[k]) for k in want), recipe

    # the records are intact: DVC clean, every cache file matches its hash, MLflow's database sound, no run RUNNING
    dvc = str(project / ".venv" / "bin" / "dvc")
    st = subprocess.run([dvc, "status", "--json", "runs/smoke/dvc.yaml"], cwd=project, capture_output=True, text=True,
                        check=True).stdout
    assert json.loads(st or "{}") == {}
    cache = list((project / ".dvc" / "cache" / "files" / "md5").glob("*/*"))
    assert cache
    for f in cache:
        digest = f.parent.name + f.name.removesuffix(".dir")
        assert hashlib.md5(f.read_bytes()).hexdigest() == digest or f.name.endswith(".dir"), f
        if f.name.endswith(".dir"):
            json.loads(f.read_text())
    with sqlite3.connect(project / "mlflow.db") as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        status = dict(db.execute("select status, count(*) from runs group by status").fetchall())
    assert "RUNNING" not in status and status.get("KILLED", 0) >= 2, status
    assert [p.name for p in (project / "outputs-smoke").rglob(".*") if ".tmp-" in p.name] == []


def _digest(tree):
    return {str(p.relative_to(tree)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(tree.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_a_stage_rerun_beside_a_busy_process_with_other_packers_writes_the_same_bytes(project, smoke_run, tmp_path):
    """Same params, same outputs: prepare (packing with another number of processes) and teacher_finetune again,
    beside a process that keeps a core busy (and the other test worker), give byte-equal outputs to the pipeline's
    own run of them. The pipeline forked them from its stage server (pipelines/stage_zygote.py); here each is a new
    interpreter."""
    proc, _ = smoke_run
    assert proc.returncode == 0, "the smoke run failed: see test_smoke_profile_through_prefect_and_dvc"
    threads = {k: v["threads"] for k, v in
               json.loads((project / "work" / "outputs-smoke" / "timeline.json").read_text())["stages"].items()}
    env = {**flow_env(project), "KDISTILL_PARAMS": "runs/smoke/params.yaml", "KDISTILL_OUTPUTS": "outputs-again",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'again.db'}"}
    # one busy process: with the other pytest-xdist worker, both cores are taken
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]
    try:
        # prepare packs with as many processes as it has threads: the pipeline's run had 2, this one 1
        assert threads["prepare"] == 2
        for step, n in (("prepare", 1), ("teacher_finetune", threads["teacher_finetune"])):
            ran = subprocess.run([sys.executable, "-m", f"tasks.{step}"], cwd=project, capture_output=True, text=True,
                                 env={**env, "KDISTILL_THREADS": str(n)}, timeout=900)
            assert ran.returncode == 0, ran.stderr[-3000:]
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    for d in ("data", "teacher"):
        want, got = _digest(project / "outputs-smoke" / d), _digest(project / "outputs-again" / d)
        assert "corpus/state.json" in want or "model.safetensors" in want
        assert got == want, f"outputs/{d}: {sorted(f for f in want.keys() | got.keys() if want.get(f) != got.get(f))}"


@pytest.mark.slow
def test_seed_and_ablation_studies_reuse_the_pipeline_and_report_mean_and_std(project, smoke_run):
    """make seeds / make ablation on the smoke profile: only the cells that differ from the pipeline run (as DVC
    stages of their own), reading its teacher and general students; the tables come from the models' dev scores."""
    proc, _ = smoke_run
    assert proc.returncode == 0, "the smoke run failed: see test_smoke_profile_through_prefect_and_dvc"
    out, reports = project / "outputs-smoke", project / "outputs-smoke" / "reports"
    general_before = (out / "general" / "tinybert" / "model.safetensors").read_bytes()

    seeds = _study(project, "seeds")
    assert seeds.returncode == 0, f"{seeds.stdout[-3000:]}\n{seeds.stderr[-4000:]}"
    cell = project / "outputs-smoke-seeds" / "seed2"
    assert not (project / "outputs-smoke-seeds" / "seed1").exists()  # seed 1 is the pipeline's own run, not redone
    for d in ("students/tinybert", "baselines/tinybert"):
        assert (cell / d / "model.safetensors").is_file(), d
    assert not (cell / "students" / "distilbert").exists()  # the recipes the study names, no others
    assert not (cell / "general").exists() and not (cell / "teacher").exists()  # shared, read where they are
    params = yaml.safe_load((project / "runs" / "smoke-seeds" / "seed2" / "params.yaml").read_text())
    assert params["base"]["seed"] == 2 and params["tracking"]["register_models"] is False
    s = json.loads((reports / "seeds.json").read_text())
    metric = s["metric"]
    shared = json.loads((out / "students" / "tinybert" / "metrics.json").read_text())[metric]
    again = json.loads((cell / "students" / "tinybert" / "metrics.json").read_text())[metric]
    tb = s["models"]["tinybert"]
    assert tb["score"]["values"] == [shared, again]
    assert tb["score"]["mean"] == pytest.approx((shared + again) / 2)
    assert tb["score"]["std"] == pytest.approx(abs(shared - again) / 2 ** 0.5)
    base_scores = s["models"]["baseline-tinybert"]["score"]["values"]
    diffs = [a - b for a, b in zip(tb["score"]["values"], base_scores)]
    assert tb["minus_baseline"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert tb["minus_baseline"]["above_two_std"] == (tb["minus_baseline"]["mean"] > 2 * tb["minus_baseline"]["std"])
    assert tb["retention"]["mean"] == pytest.approx(tb["score"]["mean"] / s["teacher"])
    md = (reports / "seeds.md").read_text()
    assert "| tinybert |" in md and "| baseline-tinybert |" in md and "margin > 2 std" in md
    # another seed trains another student from the same general student
    a = load_file(out / "students" / "tinybert" / "model.safetensors")
    b = load_file(cell / "students" / "tinybert" / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert (out / "general" / "tinybert" / "model.safetensors").read_bytes() == general_before
    dvc = str(project / ".venv" / "bin" / "dvc")
    st = subprocess.run([dvc, "status", "--json", "runs/smoke-seeds/dvc.yaml", "runs/smoke/dvc.yaml"], cwd=project,
                        capture_output=True, text=True, check=True).stdout
    assert json.loads(st or "{}") == {}  # every cell recorded; the pipeline untouched
    rerun = _study(project, "seeds")  # nothing changed: every stage skipped on DVC's word, same table
    assert rerun.returncode == 0 and json.loads((reports / "seeds.json").read_text())["stages_run"] == 0

    abl = _study(project, "ablation")
    assert abl.returncode == 0, f"{abl.stdout[-3000:]}\n{abl.stderr[-4000:]}"
    s = json.loads((reports / "ablation.json").read_text())
    cells = {c["cell"]: c for c in s["cells"]}
    assert list(cells) == ["wordnet", "none", "tinybert"] and cells["wordnet"]["shared_with_pipeline"]
    assert cells["none"]["training_rows"] == 64 and cells["wordnet"]["training_rows"] == 64 + 16
    tiny = json.loads((project / "outputs-smoke-ablation" / "tinybert" / "reports" / "augment.json").read_text())
    assert tiny["method"] == "tinybert" and tiny["augmented_sentences"] == 16 and tiny["sentences_per_s"] > 0
    assert any(x["sentence1_original"] != x["sentence1_augmented"] for x in tiny["samples"])
    for c in cells.values():
        assert set(c["models"]) == {"tinybert"} and 0 <= c["models"]["tinybert"]["score"] <= 1
    assert "| none |" in (reports / "ablation.md").read_text()
    with sqlite3.connect(project / "mlflow.db") as db:
        exps = {r[0] for r in db.execute("select name from experiments")}
    assert {"kdistill-smoke-seeds-sst2", "kdistill-smoke-ablation-sst2"} <= exps  # the cells' runs, apart


def _study(project, study):
    return subprocess.run([sys.executable, "-m", "pipelines.study", study, "--profile", "smoke"], cwd=project,
                          env=flow_env(project), capture_output=True, text=True)


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.mark.slow
def test_dvc_push_then_a_fresh_clone_pulls_every_output_without_recomputing(project, smoke_run, tmp_path):
    proc, _ = smoke_run
    assert proc.returncode == 0, "the smoke run failed: see test_smoke_profile_through_prefect_and_dvc"
    dvc = str(ROOT / ".venv" / "bin" / "dvc")
    listed = subprocess.run([dvc, "remote", "list"], cwd=project, capture_output=True, text=True, check=True).stdout
    assert f"shared\t{project.parent / 'kdistill-dvc-remote'}" in listed.replace("  ", "\t")  # the committed default
    remote = tmp_path / "remote"
    subprocess.run([dvc, "remote", "modify", "--local", "shared", "url", str(remote)], cwd=project, check=True)
    push = subprocess.run([dvc, "push", "runs/smoke/dvc.yaml"], cwd=project, capture_output=True, text=True)
    assert push.returncode == 0, push.stdout + push.stderr

    _git(project, "add", "-A")
    # reports are DVC outputs kept in git (cache: false), as reports/ is for the default profile
    _git(project, "add", "-f", "outputs-smoke/reports")
    _git(project, "commit", "-qm", "smoke run records")
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(project), str(clone))
    for link in (".venv", ".assets"):
        if not (clone / link).exists():
            (clone / link).symlink_to(ROOT / link)
    subprocess.run([dvc, "remote", "modify", "--local", "shared", "url", str(remote)], cwd=clone, check=True)
    pull = subprocess.run([dvc, "pull", "runs/smoke/dvc.yaml"], cwd=clone, capture_output=True, text=True)
    assert pull.returncode == 0, pull.stdout + pull.stderr
    st = subprocess.run([dvc, "status", "--json", "runs/smoke/dvc.yaml"], cwd=clone, capture_output=True, text=True,
                        check=True).stdout
    assert json.loads(st or "{}") == {}  # every stage up to date: nothing to recompute
    assert not (clone / "work").exists()  # and nothing was: no stage ran in the clone
    for rel in ("outputs-smoke/students/tinybert/model.safetensors", "outputs-smoke/onnx/tinybert/model.int8.onnx",
                "outputs-smoke/reports/summary.json"):
        assert (clone / rel).read_bytes() == (project / rel).read_bytes(), rel


def _api(url, path, body):
    import urllib.request

    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_a_worker_of_the_work_pool_runs_a_deployment_run_triggered_on_the_server(project, smoke_run, tmp_path):
    """`make schedule` registers the deployment on the pool, `make worker` polls it; a run triggered on the server (as
    the UI's Run button does) is executed by that worker and ends Completed. With `schedule.training_pool` set, the
    one stale training stage (its output removed) runs as a flow run on that pool's worker (`make worker POOL=...`),
    and the flow records it in dvc.lock; every other stage is up to date or runs with the flow."""
    proc, _ = smoke_run
    assert proc.returncode == 0, "the smoke run failed: see test_smoke_profile_through_prefect_and_dvc"
    params = project / "profiles" / "smoke.yaml"  # a profile is complete on its own: the key goes there
    original = params.read_text()
    # one thread, as the flow gave the stage beside others: the pool's rerun writes the same bytes, so evaluate and
    # export, which read it, stay up to date (DVC compares the bytes) and the test waits for one stage only
    changed = yaml.safe_load(original)
    changed["base"]["threads"] = 1
    changed["schedule"] = {"training_pool": "kdistill-train"}
    params.write_text(yaml.safe_dump(changed, sort_keys=False))

    shutil.rmtree(project / "outputs-smoke" / "baselines" / "tinybert")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    # the workers ask the server for runs every 2 s (Prefect's default: 10), which the test would otherwise wait out
    env = {**flow_env(project), "PREFECT_HOME": str(tmp_path / "prefect"), "KDISTILL_PREFECT_PORT": str(port),
           "KDISTILL_PROFILE": "smoke", "PREFECT_WORKER_QUERY_SECONDS": "2"}
    env.pop("PREFECT_API_URL", None)
    procs = []

    def start(args, log, **more):
        procs.append(subprocess.Popen(args, cwd=project, env={**env, **more}, stdout=(tmp_path / log).open("w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        return procs[-1]

    try:
        server = start([str(ROOT / ".venv" / "bin" / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                        str(port)], "server.log")
        _until(lambda: api_healthy(api), server, seconds=180, what="the Prefect server", every=1.0)
        dep = subprocess.run([sys.executable, "-m", "pipelines.schedule"], cwd=project, env=env, capture_output=True,
                             text=True, timeout=300)
        assert dep.returncode == 0 and "work pool 'kdistill'" in dep.stdout, dep.stdout + dep.stderr
        # `make schedule` found the server from the port alone (re-started itself with PREFECT_API_URL set); the
        # workers are given the URL, which spares each that second start
        worker = start([sys.executable, "-m", "pipelines.worker"], "worker.log", PREFECT_API_URL=api)
        trainer = start([sys.executable, "-m", "pipelines.worker", "--pool", "kdistill-train"], "worker-train.log",
                        PREFECT_API_URL=api)
        deployment = _api(api, "/deployments/filter", {"limit": 5})[0]
        assert deployment["work_pool_name"] == "kdistill" and deployment["parameters"] == {"profile": "smoke"}
        run = _api(api, f"/deployments/{deployment['id']}/create_flow_run", {})
        state = {}

        def finished():
            state.update(_api(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})[0]["state"])
            return state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

        _until(finished, worker, seconds=900, what="the end of the flow run", every=1.0)
        log = (tmp_path / "worker.log").read_text()
        assert state["type"] == "COMPLETED", log[-3000:]
        assert "up to date (dvc status)" in log and "temporary server" not in log  # the worker ran it, on this server
        assert "sending baseline@tinybert to work pool 'kdistill-train'" in log
        stage_runs = _api(api, "/flow_runs/filter", {"flow_runs": {"name": {"any_": ["baseline@tinybert"]}}})
        assert [(r["state"]["type"], r["work_pool_name"]) for r in stage_runs] == [("COMPLETED", "kdistill-train")]
        assert "baseline@tinybert" in (tmp_path / "worker-train.log").read_text()
        assert "evaluate done" not in log and "export done" not in log  # the same bytes: nothing downstream reran
        assert trainer.poll() is None
        assert (project / "outputs-smoke" / "baselines" / "tinybert" / "model.safetensors").is_file()
        status = subprocess.run([str(ROOT / ".venv" / "bin" / "dvc"), "status", "runs/smoke/dvc.yaml"], cwd=project,
                                capture_output=True, text=True, timeout=300)
        assert "up to date" in status.stdout, status.stdout  # recorded by the flow after the pool's run
    finally:
        params.write_text(original)
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGINT)
                p.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)


def _kill_everything(proc, project) -> None:
    """SIGKILL the pipeline as a crash would: the flow's process group and anything else running in the project
    (the stage processes, the temporary Prefect server)."""
    import psutil

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for other in psutil.process_iter(["cwd", "cmdline"]):
        try:
            if other.info["cwd"] and other.info["cwd"].startswith(str(project)):
                other.kill()
        except psutil.Error:
            pass
    time.sleep(1)


def _start_flow(project):
    return subprocess.Popen([sys.executable, "-m", "pipelines.flow", "--profile", "smoke"], cwd=project,
                            env=flow_env(project), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _recorded(project) -> set:
    lock = project / "runs" / "smoke" / "dvc.lock"
    try:
        return set((yaml.safe_load(lock.read_text()) or {}).get("stages", {}))
    except (OSError, yaml.YAMLError):
        return set()


def _until(cond, proc, seconds=900, what="", every=0.02):
    """Wait for `cond`, checking every `every` s: short for a file appearing, longer for a check that costs CPU
    (parsing dvc.lock, a request to the Prefect server), which would otherwise take a core from what it waits for."""
    deadline = time.time() + seconds
    while not cond():
        assert proc.poll() is None, f"the pipeline ended (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"no {what} within {seconds} s"
        time.sleep(every)
