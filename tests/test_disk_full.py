"""A full disk: a real, small tmpfs fills up under a stage; the stage ends with one line, nothing partial is left and
the earlier outputs stay byte for byte. Needs `mount` (root, as on the CI machine); skipped with the reason otherwise."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdistill.distill.objectives import Supervised
from kdistill.io import DiskFullError, atomic_dir, atomic_file
from kdistill.train.trainer import Trainer, TrainerConfig

from .conftest import ROOT
from .test_trainer import _tiny_task


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {exc}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> None:
    """Take all but `leave` bytes of the file system."""
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def _digest(tree: Path) -> dict:
    return {str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tree.rglob("*")) if p.is_file()}


def _leftovers(tree: Path) -> list:
    return [p.name for p in tree.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.slow
def test_a_stage_on_a_full_disk_fails_in_one_line_and_keeps_its_earlier_outputs(tmpfs):
    env = {**os.environ, "KDISTILL_PARAMS": "runs/smoke/params.yaml", "KDISTILL_OUTPUTS": str(tmpfs / "outputs"),
           "HF_HUB_OFFLINE": "1"}
    step = [sys.executable, "-m", "tasks.prepare"]
    first = subprocess.run(step, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _digest(tmpfs / "outputs" / "data")
    assert "train/dataset_info.json" in before

    _fill(tmpfs, leave=64 * 1024)  # far less than the data the stage writes
    second = subprocess.run(step, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 2, second.stderr[-3000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no space left" in last and str(tmpfs / "outputs" / "data") in last, last
    assert "Traceback" not in second.stderr
    assert _digest(tmpfs / "outputs" / "data") == before  # the earlier outputs, byte for byte
    assert _leftovers(tmpfs / "outputs") == []  # no partial temporary directory left behind


class _FillAt:
    """Fills the disk once training reaches `step`: the next checkpoint finds no room."""

    def __init__(self, mnt, step):
        self.mnt, self.step = mnt, step

    def on_step(self, step, components, total, lr):
        if step == self.step:
            _fill(self.mnt, leave=16 * 1024)

    def on_eval(self, step, metrics):
        pass


def test_training_stops_on_a_checkpoint_that_does_not_fit_and_keeps_the_previous_one(tmpfs, make_bert):
    cfg = TrainerConfig(lr=1e-3, batch_size=8, max_steps=6, checkpoint_every=2, desc="full-disk")
    trainer = Trainer(Supervised(make_bert("seq")), _tiny_task(), cfg, tmpfs / "ckpt", callbacks=[_FillAt(tmpfs, 3)])
    with pytest.raises(DiskFullError, match="ckpt: no space left"):
        trainer.train()  # checkpoint at step 2 written, the one at step 4 does not fit
    assert torch.load(tmpfs / "ckpt" / "state.pt", weights_only=False)["step"] == 2
    assert _leftovers(tmpfs) == []


def test_atomic_writers_on_a_full_disk_raise_one_clear_error_and_leave_nothing(tmpfs):
    (tmpfs / "out").mkdir()
    (tmpfs / "out" / "keep.txt").write_text("earlier")
    (tmpfs / "table.csv").write_text("earlier")
    _fill(tmpfs, leave=8 * 1024)
    with pytest.raises(DiskFullError, match="table.csv: no space left"):
        with atomic_file(tmpfs / "table.csv") as tmp:
            tmp.write_bytes(b"x" * (1 << 20))
    with pytest.raises(DiskFullError, match="out: no space left"):
        with atomic_dir(tmpfs / "out") as tmp:
            torch.save(torch.zeros(1 << 18), tmp / "weights.pt")  # torch reports a short write, not ENOSPC
    assert (tmpfs / "table.csv").read_text() == "earlier"
    assert (tmpfs / "out" / "keep.txt").read_text() == "earlier"
    assert _leftovers(tmpfs) == []
