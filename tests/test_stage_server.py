"""The flow's stage server (pipelines/stage_zygote.py): a `python -m` stage command forked from a warm interpreter
runs as a new interpreter would run it (its arguments, environment, working directory, output, exit status), beside
another, and anything else starts as a subprocess. That a forked training stage writes the same bytes as a new
interpreter is checked on the smoke run (test_smoke_pipeline: prepare and teacher_finetune re-run as subprocesses)."""

import json
import os
import sys
import threading

import pytest

from pipelines import stage_zygote
from pipelines.stage_exec import StageFailed, run_command

from .conftest import ROOT

PY = sys.executable


@pytest.fixture(scope="module")
def server():
    with stage_zygote.serving({**os.environ, "HF_HUB_OFFLINE": "1"}) as s:
        assert s is not None and s.ready()
        yield s


def _probe(tmp_path, end, name="probe", **env):
    log = tmp_path / f"{name}.log"
    run_command(name, f"PROBE=seen {PY} -m tests.stage_probe {end} --flag 'two words'", ROOT, {**os.environ, **env},
                log)
    return json.loads(log.read_text().splitlines()[0]), log.read_text()


def test_only_this_interpreter_running_a_module_goes_to_the_server():
    venv = ROOT / ".venv" / "bin" / "python"
    assert stage_zygote.module_command(".venv/bin/python -m tasks.prepare", ROOT) == (
        {}, [".venv/bin/python", "-m", "tasks.prepare"])
    assert stage_zygote.module_command(f"{venv} -m tasks.general_distill tinybert", "/") == (
        {}, [str(venv), "-m", "tasks.general_distill", "tinybert"])
    # a profile's stage: its params and outputs set in front of the command
    assert stage_zygote.module_command("KDISTILL_PARAMS=runs/smoke/params.yaml KDISTILL_OUTPUTS=outputs-smoke "
                                       ".venv/bin/python -m tasks.prepare", ROOT) == (
        {"KDISTILL_PARAMS": "runs/smoke/params.yaml", "KDISTILL_OUTPUTS": "outputs-smoke"},
        [".venv/bin/python", "-m", "tasks.prepare"])
    assert stage_zygote.module_command(f"{venv} -c 'print(1)'", ROOT) is None
    assert stage_zygote.module_command(f"{venv} -m tasks.prepare && echo done", ROOT) is None
    assert stage_zygote.module_command(f"{venv} -m tasks.prepare > out.txt", ROOT) is None
    assert stage_zygote.module_command(f"A=$HOME {venv} -m tasks.prepare", ROOT) is None
    assert stage_zygote.module_command("/usr/bin/python3 -m tasks.prepare", ROOT) is None
    assert stage_zygote.module_command("exit 3", ROOT) is None


def test_a_module_runs_forked_with_its_arguments_environment_and_output(server, tmp_path):
    said, log = _probe(tmp_path, "0")
    assert said == {"argv": ["0", "--flag", "two words"], "cwd": str(ROOT), "probe": "seen", "other": None,
                    "name": "__main__", "preloaded": True, "spec": "tests.stage_probe"}
    assert "a line on stderr" in log


def test_exit_status_and_the_stages_own_error_come_back(server, tmp_path):
    with pytest.raises(StageFailed, match=r"exit 2\): the probe's own one-line error"):
        _probe(tmp_path, "error")
    with pytest.raises(StageFailed, match=r"exit 3\)"):
        _probe(tmp_path, "3")
    with pytest.raises(StageFailed, match=r"(?s)exit 1\).*RuntimeError: the probe raised"):
        _probe(tmp_path, "raise")


def test_two_stages_run_at_once_each_with_its_own_output(server, tmp_path):
    seen, errors = {}, []

    def one(i):
        try:
            seen[i] = _probe(tmp_path, "0", name=f"p{i}", OTHER=f"stage {i}")[0]["other"]
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and seen == {0: "stage 0", 1: "stage 1"}


def test_without_a_server_or_with_it_switched_off_stages_are_subprocesses(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_zygote, "_server", None)  # as in a training pool's worker
    said, _ = _probe(tmp_path, "0")
    assert said["preloaded"] is False and said["name"] == "__main__"
    monkeypatch.setenv("KDISTILL_STAGE_SERVER", "0")
    with stage_zygote.serving(dict(os.environ)) as s:
        assert s is None
        assert _probe(tmp_path, "0")[0]["preloaded"] is False


def test_a_server_started_early_is_the_one_serving_and_an_unused_one_is_stopped(tmp_path):
    """`early` spawns the server before the flow starts Prefect (its imports overlap that start); `serving` inside it
    takes that process over rather than starting a second; one never taken over is stopped when `early` ends."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with stage_zygote.early(env):
        spawned = stage_zygote._early.proc
        assert spawned is not None and spawned.poll() is None
        with stage_zygote.serving(env) as s:
            assert s.proc is spawned and stage_zygote._early is None
            said, _ = _probe(tmp_path, "0")
            assert said["preloaded"] is True
        assert spawned.wait(timeout=30) is not None  # closed with the run
    with stage_zygote.early(env):
        unused = stage_zygote._early.proc
    assert unused.wait(timeout=30) is not None and stage_zygote._early is None
