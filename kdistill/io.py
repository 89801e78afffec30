"""Atomic writes: outputs appear complete or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from .errors import KdistillError


def check_dir_target(target: str | Path) -> None:
    """Refuse, before any work, an output directory that is, or lies under, an existing file."""
    target = Path(target)
    for parent in [target, *target.parents]:
        if parent.exists() and not parent.is_dir():
            raise KdistillError(f"{parent}: exists and is not a directory, so {target} cannot be written there "
                                "(move it away, or point KDISTILL_OUTPUTS elsewhere)")


@contextlib.contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary sibling directory; on success replace `target` with it, on failure remove it."""
    target = Path(target)
    check_dir_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
