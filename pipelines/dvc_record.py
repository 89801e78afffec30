"""DVC as the record of stages the flow runs side by side.

`dvc repro` holds DVC's repository lock for as long as a stage runs, so two stages can never run through it at once.
The flow therefore splits what `dvc repro --single-item` does into its three parts: ask DVC whether the stage is
stale (`dvc status`), run the stage's own command (outside any DVC lock, several at once), then let DVC record the
result (`dvc commit`: hashes deps and outs, caches the outs, writes the stage's dvc.lock entry). Only the two short
DVC calls are serialised, by one lock in the flow process; a stage that fails is never committed, so it leaves no
lock entry, and its outputs (written to a temporary path and renamed by the stage) are either complete or absent.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from kdistill.errors import KdistillError

ROOT = Path(__file__).resolve().parent.parent
DVC = str(ROOT / ".venv" / "bin" / "dvc")


class DvcError(KdistillError):
    """DVC refused (a params key missing, a lock held elsewhere, ...): its own words are in the message."""


class DvcRecord:
    def __init__(self, root: Path = ROOT):
        self.root = root
        self._lock = threading.Lock()

    def _dvc(self, *args: str) -> str:
        # Serialised here; a `dvc` the user runs meanwhile can still hold DVC's own lock for a moment: retry.
        with self._lock:
            for attempt in range(30):
                proc = subprocess.run([DVC, *args], cwd=self.root, capture_output=True, text=True)
                if proc.returncode == 0:
                    return proc.stdout
                if "Unable to acquire lock" not in proc.stderr + proc.stdout:
                    break
                time.sleep(1 + attempt % 3)
            said = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-5:])
            raise DvcError(f"`dvc {' '.join(args)}` failed (exit {proc.returncode}): {said}")

    def status(self, *targets: str, with_deps: bool = False) -> dict:
        """What DVC would re-run among `targets` (with_deps: and the stages they read from) and why ({} when up to
        date)."""
        return json.loads(self._dvc("status", "--json", *(["--with-deps"] if with_deps else []), *targets) or "{}")

    def stale(self, target: str) -> bool:
        return bool(self.status(target))

    def commit(self, target: str) -> None:
        """Record a finished stage: its deps, params and outs hashed into dvc.lock, the outs into the cache."""
        self._dvc("commit", "--force", target)
