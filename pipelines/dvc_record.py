"""DVC as the record of stages the flow runs side by side.

`dvc repro` holds DVC's repository lock for as long as a stage runs, so two stages can never run through it at once.
The flow therefore splits what `dvc repro --single-item` does into its three parts: ask DVC whether the stage is
stale (`dvc status`), run the stage's own command (outside any DVC lock, several at once), then let DVC record the
result (`dvc commit`: hashes deps and outs, caches the outs, writes the stage's dvc.lock entry). Only the two short
DVC calls are serialised, by one lock in the flow process; a stage that fails is never committed, so it leaves no
lock entry, and its outputs (written to a temporary path and renamed by the stage) are either complete or absent.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from dvc.exceptions import DvcException
from dvc.lock import LockError
from dvc.repo import Repo

from kdistill.errors import KdistillError

ROOT = Path(__file__).resolve().parent.parent
DVC = str(ROOT / ".venv" / "bin" / "dvc")


class DvcError(KdistillError):
    """DVC refused (a params key missing, a lock held elsewhere, ...): its own words are in the message."""


class DvcRecord:
    """`dvc status` and `dvc commit` through DVC's Python API, in this process: a `dvc` subprocess would import DVC
    again for every call (about 1.5 s of CPU each, two calls per stage, all of them in the one serialised section)."""

    def __init__(self, root: Path = ROOT):
        self.root = root
        self._lock = threading.Lock()

    def _call(self, what: str, fn):
        if not Path.cwd().resolve().is_relative_to(self.root.resolve()):
            # DVC's API takes the cwd for a place inside the repository (its run cache builds paths from it)
            raise DvcError(f"DVC's records are written from inside the project: the working directory is {Path.cwd()}, "
                           f"not {self.root} or a folder in it")
        # Serialised here; a `dvc` the user runs meanwhile can still hold DVC's own lock for a moment: retry.
        with self._lock:
            for attempt in range(30):
                try:
                    with Repo(str(self.root)) as repo:  # opened afresh: dvc.lock changes between calls
                        return fn(repo)
                except LockError:
                    time.sleep(1 + attempt % 3)
                except DvcException as e:
                    raise DvcError(f"`dvc {what}` failed: {_words(e)}") from None
            raise DvcError(f"`dvc {what}` failed: DVC's repository lock stayed held by another dvc process for a minute")

    def _absolute(self, target: str) -> str:
        # in-process DVC reads targets (and names stages in its answers) relative to the cwd, not to the repo
        if (self.root / target).is_file():  # a whole dvc.yaml
            return str(self.root / target)
        path, _, name = target.rpartition(":")
        return f"{self.root / (path or 'dvc.yaml')}:{name}"

    def _ours(self, key: str) -> str:
        """A stage as DVC named it, relative to the cwd, back to the form the flow uses (relative to the repo)."""
        path, sep, name = key.rpartition(":")
        if not sep:
            return key
        rel = Path(os.path.relpath(os.path.abspath(path), self.root)).as_posix()
        return name if rel == "dvc.yaml" else f"{rel}:{name}"

    def status(self, *targets: str) -> dict:
        """What DVC would re-run among `targets` (all when none) and why ({} when up to date), keyed like the flow's
        stage targets."""
        found = self._call(f"status {' '.join(targets)}".strip(),
                           lambda repo: repo.status(targets=[self._absolute(t) for t in targets] or None))
        return {self._ours(k): v for k, v in found.items()}

    def stale(self, target: str) -> bool:
        return bool(self.status(target))

    def commit(self, target: str) -> None:
        """Record a finished stage: its deps, params and outs hashed into dvc.lock, the outs into the cache."""
        self._call(f"commit --force {target}", lambda repo: repo.commit(self._absolute(target), force=True))


def _words(e: BaseException) -> str:
    """DVC's message and those of the errors under it (a missing params key is two levels down)."""
    said, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if str(e) and str(e) not in said:
            said.append(str(e))
        e = e.__cause__ or e.__context__
    return ": ".join(said)
