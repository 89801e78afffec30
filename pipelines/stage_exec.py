"""A stage's command in a process of its own (forked by pipelines/stage_zygote.py, or a subprocess): output streamed
with the stage's name, kept in full in its log file, and a failure turned into one error that carries the stage's own
`error:` line. Used by the flow, and by a training pool's worker (pipelines/remote_stage.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from kdistill.errors import KdistillError

from . import stage_zygote

_PROGRESS = re.compile(r"\d+%\||\d+/\d+ \[")  # tqdm bar lines
_print_lock = threading.Lock()


def _echo(stage: str, line: str) -> None:
    with _print_lock:
        sys.stdout.write(f"{stage:>27} | {line}\n")
        sys.stdout.flush()


class StageFailed(KdistillError):
    """The stage's own command failed. `rc` 2 is the project's error status: the stage refused with its one-line
    error, and running it again would say the same. Any other status is a crash, worth one more try (a training
    stage resumes from its checkpoint)."""

    def __init__(self, message: str, rc: int | None = None):
        super().__init__(message)
        self.rc = rc

    @property
    def deliberate(self) -> bool:
        return self.rc == 2


def _reason(tail: list[str]) -> str:
    """The stage's own one-line error when it gave one (tasks.common.cli), else its last lines."""
    said = [line.removeprefix("error: ") for line in tail if line.startswith("error: ")]
    return said[-1] if said else "\n".join(tail[-8:])


def run_command(name: str, cmd: str, wdir: str | Path, env: dict, log_file: Path) -> None:
    """A stage's command. Output goes to this terminal prefixed with the stage name (progress bars every 20 s, as
    stages interleave) and in full to the stage's log file; a failure raises StageFailed with the stage's own error."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    last_bar = 0.0
    # forked from the flow's stage server when one runs and the command is `python -m <module>`, else a subprocess
    server = stage_zygote.current()
    parsed = stage_zygote.module_command(cmd, wdir) if server else None
    started = server.start(parsed[1], str(wdir), {**env, **parsed[0]}) if parsed else None
    if started is None:
        proc = subprocess.Popen(cmd, shell=True, cwd=wdir, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        started = proc.stdout, proc.wait
    stream, wait = started
    with open(log_file, "w") as full, stream:
        for line in stream:  # text mode: tqdm's \r updates arrive as lines
            line = line.rstrip()
            if not line:
                continue
            full.write(line + "\n")
            is_bar = bool(_PROGRESS.search(line))
            if not is_bar or time.time() - last_bar > 20 or "100%|" in line:
                _echo(name, line)
                last_bar = time.time() if is_bar else last_bar
            if not is_bar:
                tail = (tail + [line])[-15:]
    rc = wait()
    if rc:
        raise StageFailed(f"stage {name} failed (exit {rc}): {_reason(tail)} (full log: {_shown(log_file)})", rc)


def _shown(path: Path) -> str:
    """A log's path as a user types it: relative to the directory they ran from when it lies under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
