"""Deliberate errors end a step or the pipeline with one line naming what is wrong, and exit status 2."""

import os
import sqlite3
import subprocess
import sys

import pytest

from .conftest import ROOT, copy_project, flow_env, free_port


def _run(args, tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k != "KDISTILL_DEBUG"}
    env = {**base, "KDISTILL_OUTPUTS": str(tmp_path / "out"), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True)


def test_a_step_refuses_bad_params_in_one_line_with_exit_2(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("base: {tacher: x}\n")
    proc = _run(["tasks.prepare"], tmp_path, KDISTILL_PARAMS=str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: unknown key 'base.tacher'; did you mean 'base.teacher'? (valid keys here: seed, task, data_dir, "
        "teacher, recipes, allow_pickle_weights, max_seq_len, max_train_examples, eval_split, validation_rows, "
        "checkpoint_rule, precision, threads, "
        "max_parallel, "
        "nproc)"]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("base: {threads: 0}\n")
    proc = _run(["tasks.prepare"], tmp_path, KDISTILL_PARAMS=str(bad), KDISTILL_DEBUG="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ParamsError" in proc.stderr


def test_an_output_path_under_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = _run(["tasks.prepare"], tmp_path, KDISTILL_PARAMS=str(ROOT / "profiles" / "smoke.yaml"),
                KDISTILL_OUTPUTS=str(tmp_path / "afile" / "out"))
    assert proc.returncode == 2 and "exists and is not a directory" in proc.stderr
    assert "pack corpus" not in proc.stdout + proc.stderr  # no work started


def test_the_pipeline_refuses_an_unknown_profile_before_any_server_starts(tmp_path):
    proc = _run(["pipelines.flow", "--profile", "no-such-profile"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: profiles/no-such-profile.yaml not found")
    assert "Traceback" not in proc.stderr and "temporary server" not in proc.stdout + proc.stderr


def test_an_unreachable_tracking_server_stops_the_pipeline_before_any_work(tmp_path):
    port = free_port()
    proc = _run(["pipelines.flow", "--profile", "smoke"], tmp_path,
                MLFLOW_TRACKING_URI=f"http://user:secret@127.0.0.1:{port}")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking.mlflow_uri: no MLflow server answers at 127.0.0.1:{port}")
    assert "secret" not in proc.stdout + proc.stderr  # credentials in the URI are never printed
    assert "temporary server" not in proc.stdout + proc.stderr


def test_a_second_pipeline_refuses_at_once_and_names_the_running_one(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pipelines.run_lock import pipeline_lock\n"
         "with pipeline_lock('default'):\n    print('held', flush=True)\n    time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = _run(["pipelines.flow"], tmp_path)
        assert proc.returncode == 2
        assert f"another pipeline is running in {ROOT}: profile default, pid {holder.pid}" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    # killed holder (SIGKILL): the OS frees the lock, so the next run may start
    from pipelines.run_lock import pipeline_lock

    with pipeline_lock("default"):
        pass


def test_runs_of_a_killed_pipeline_are_marked_killed_at_the_next_start(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from pipelines.flow import close_orphan_runs

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    exp = mlflow.create_experiment("kdistill-test", artifact_location=(tmp_path / "art").as_uri())
    client = MlflowClient()
    parent = client.create_run(exp, run_name="pipeline-default")  # left RUNNING, as after kill -9
    client.create_run(exp, run_name="teacher_finetune", tags={"mlflow.parentRunId": parent.info.run_id})
    own = client.create_run(exp, run_name="a user's notebook run")  # not the pipeline's: left alone
    assert close_orphan_runs("kdistill-test") == 2
    status = {r.info.run_name: r.info.status for r in client.search_runs([exp])}
    assert status == {"pipeline-default": "KILLED", "teacher_finetune": "KILLED", "a user's notebook run": "RUNNING"}
    assert close_orphan_runs("kdistill-test") == 0 and own
    mlflow.set_tracking_uri(before)


@pytest.mark.slow
def test_a_stage_that_fails_later_ends_the_pipeline_with_its_line_and_a_failed_flow_run(tmp_path):
    """Preflight cannot see a bad byte inside the corpus; the prepare stage does, and that line ends `make pipeline`
    (printed last) and is the message of the Failed flow run in Prefect."""
    project = copy_project(tmp_path / "proj")
    (project / "data" / "corpus" / "bad.txt").write_bytes(b"A fine first paragraph.\n\nbad \xff byte here\n")
    (project / "profiles" / "badcorpus.yaml").write_text("extends: smoke.yaml\nprepare: {corpus: data/corpus/bad.txt}\n")
    env = flow_env(project)
    proc = subprocess.run([sys.executable, "-m", "pipelines.flow", "--profile", "badcorpus"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stage prepare failed (exit 2): ") and "bad.txt:3: not valid UTF-8" in last, \
        proc.stderr[-2000:]
    # one line: the stage's own error, the stage and its full log; no traceback from Prefect or the flow
    log = "work/outputs-badcorpus/logs/prepare.log"
    assert last.endswith(f"(full log: {log})") and "not valid UTF-8" in (project / log).read_text()
    assert "Traceback" not in proc.stdout + proc.stderr and "NoneType: None" not in proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).count("running prepare with") == 1  # a refusal is not retried: it would say the same
    with sqlite3.connect(project / ".prefect" / "prefect.db") as db:
        runs = db.execute("select fr.state_type, s.message from flow_run fr join flow_run_state s on s.id = fr.state_id"
                          ).fetchall()
    assert len(runs) == 1 and runs[0][0] == "FAILED", runs
    assert "bad.txt:3: not valid UTF-8" in runs[0][1], runs
