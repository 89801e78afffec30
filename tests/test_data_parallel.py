"""Data-parallel training (torchrun, gloo, 2 CPU processes) against the one-process trainer, and kill/resume."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from kdistill.train import distributed
from tasks.common import resolve_nproc

from .conftest import ROOT

# Two processes sum their shares of each batch's gradients where one process sums all rows at once, pad each shard
# to its own longest row and compute the cached teacher logits in other batches: the same arithmetic in another
# order. fp32 rounding is ~6e-8 relative per operation; over these 12 AdamW steps the weights measured 1.2e-7 apart
# at most, so 1e-5 leaves room for other BLAS builds while a wrong shard weighting (a factor 2 in a gradient) or a
# skipped or repeated batch moves weights by ~1e-3 (lr 2e-3).
TOLERANCE = 1e-5


def _launch(workdir, nproc: int, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "tests.ddp_worker", str(workdir), str(delay)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--max-restarts=0", "-m", "tests.ddp_worker", str(workdir), str(delay)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def _finish(p: subprocess.Popen, workdir) -> dict:
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-3000:]
    return torch.load(workdir / "final.pt", weights_only=False)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp2")
    return _finish(_launch(work, 2), work)


@pytest.mark.slow
def test_two_processes_follow_the_one_process_run(tmp_path, two_process_run):
    one = _finish(_launch(tmp_path, 1), tmp_path)
    two = two_process_run
    assert (one["world"], two["world"]) == (1, 2)
    # the teacher-logit cache computed in two shards and gathered is the one-process cache
    assert torch.allclose(one["logits"], two["logits"], atol=1e-6)
    # the same 12 global batches: the same loss at every step, the same best step chosen on the dev set
    assert len(one["history"]) == len(two["history"]) == 12
    assert max(abs(x - y) for x, y in zip(one["history"], two["history"])) < 1e-5
    assert one["best_step"] == two["best_step"]
    assert _max_diff(one["student"], two["student"]) < TOLERANCE
    # and training moved the weights far more than the tolerance (the comparison can fail)
    torch.manual_seed(1)
    from transformers import BertForSequenceClassification

    from .conftest import tiny_config

    init = BertForSequenceClassification(tiny_config(layers=2, hidden=16, heads=4, num_labels=2)).state_dict()
    assert _max_diff(init, one["student"]) > 1e-3


def _rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process | None:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


@pytest.mark.slow
def test_killed_rank_ends_the_run_and_the_rerun_resumes_to_the_same_weights(tmp_path, two_process_run):
    p = _launch(tmp_path, 2, delay=0.4)  # rank 0 sleeps after each step: time to kill mid-run
    state = tmp_path / "ckpt" / "state.pt"
    deadline = time.time() + 240
    step = 0
    while time.time() < deadline and p.poll() is None:
        if state.exists():
            try:
                step = torch.load(state, weights_only=False)["step"]
            except Exception:  # replaced while being read
                pass
            if step >= 4:
                break
        time.sleep(0.05)
    assert 4 <= step < 12, f"no mid-run checkpoint (step {step}); {p.stderr.read().decode()[-2000:] if p.poll() is not None else ''}"
    rank1 = _rank_process(p, 1)
    assert rank1 is not None
    rank1.send_signal(signal.SIGKILL)
    rc = p.wait(timeout=120)  # torchrun stops rank 0 and fails: a killed rank ends the run
    assert rc != 0
    assert not (tmp_path / "final.pt").exists()
    saved = torch.load(state, weights_only=False)
    assert len(saved["rng_ranks"]) == 2  # every rank's random state, for an exact resume
    resumed = _finish(_launch(tmp_path, 2), tmp_path)
    assert resumed["resumed_from"] is not None and resumed["resumed_from"] >= 4
    # resuming replays the same batches from the same state: the uninterrupted run's weights, bit for bit here
    assert _max_diff(resumed["student"], two_process_run["student"]) < 1e-6
    assert not state.exists()  # a finished run removes its checkpoint


def test_process_count_comes_from_params_or_environment(monkeypatch):
    monkeypatch.delenv("KDISTILL_NPROC", raising=False)
    assert resolve_nproc(1) == 1 and resolve_nproc(3) == 3
    assert resolve_nproc("auto") == (max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1)
    monkeypatch.setenv("KDISTILL_NPROC", "2")
    assert resolve_nproc(1) == 2
    monkeypatch.setenv("KDISTILL_NPROC", "two")
    with pytest.raises(Exception, match="KDISTILL_NPROC"):
        resolve_nproc(1)


def test_without_torchrun_everything_is_one_process():
    w = distributed.world()
    assert (w.rank, w.size, w.main, w.active) == (0, 1, True, False)
    assert list(distributed.shard_rows(5)) == [0, 1, 2, 3, 4]
    t = torch.ones(3)
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1.0, 1.0, 1.0]
    assert distributed.rank0_value("x") == "x" and distributed.gather_objects(4) == [4]


@pytest.mark.slow
def test_a_stage_launched_on_two_processes_fails_with_the_ranks_error_last(tmp_path):
    """NPROC=2 relaunches a training step under torchrun; a rank's deliberate error ends the step with that one
    line last (after torchrun's own failure report) and exit status 2, as a one-process step would."""
    env = {**os.environ, "KDISTILL_PARAMS": "runs/smoke/params.yaml", "KDISTILL_OUTPUTS": str(tmp_path / "out"),
           "KDISTILL_NPROC": "2", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "tasks.task_distill", "tinybert"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "data-parallel: 2 processes (torchrun, gloo)" in proc.stdout
    assert "2 processes x 1 threads" in proc.stdout  # each rank's share of the CPUs
    want = f"error: {tmp_path / 'out' / 'data' / 'task.json'}: no task record; run the prepare stage first"
    assert proc.stderr.strip().splitlines()[-1] == want
