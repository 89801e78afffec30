"""One pipeline at a time per project: a second `make pipeline` refuses at once and names the one running.

Refusing beats waiting: a second run started by mistake would otherwise sit silently for the length of a whole
pipeline and then redo the same check. The lock is an OS file lock (flock), so a killed run (even kill -9) frees it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

from kdistill.errors import KdistillError

from .stage_graph import ROOT

_held = False  # this process holds it already (main() and the flow body both ask)


class PipelineBusy(KdistillError):
    pass


@contextlib.contextmanager
def pipeline_lock(profile: str, root: Path = ROOT):
    global _held
    if _held:
        yield
        return
    path = root / ".dvc" / "tmp" / "kdistill-pipeline.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                other = json.loads(fh.read() or "{}")
            except ValueError:
                other = {}
            raise PipelineBusy(
                f"another pipeline is running in {root}: profile {other.get('profile', '?')}, pid "
                f"{other.get('pid', '?')}, started {other.get('started', '?')}; wait for it to end or stop it "
                f"(kill {other.get('pid', '<pid>')}), then run again") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "profile": profile,
                             "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
        fh.flush()
        _held = True
        try:
            yield
        finally:
            _held = False
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
