"""Atomic writes: outputs appear complete or not at all."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from kdistill.errors import KdistillError

# Below this many free bytes a failed write is taken for a full disk: torch.save and np.save report a short write
# without an errno ("unexpected pos ...", "... requested and ... written"), so the errno alone misses them.
_FULL_BELOW = 1 << 20


class DiskFullError(KdistillError):
    pass


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            return shutil.disk_usage(p).free
    return None


def is_disk_full(exc: BaseException, where: str | Path | None = None) -> bool:
    """True when `exc` (or an exception it came from) means the file system ran out of space or quota."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen) or "os error 28" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    free = _free_bytes(Path(where)) if where is not None else None
    return free is not None and free < _FULL_BELOW


def disk_full_error(target: str | Path, removed: str | Path | None = None) -> DiskFullError:
    target = Path(target)
    free = _free_bytes(target)
    kept = f"the partial {Path(removed).name} was removed and any earlier {target.name} is unchanged; " if removed else ""
    return DiskFullError(f"{target}: no space left on the file system while writing it "
                         f"({(free or 0) / 2**20:.1f} MiB free now); {kept}"
                         "free some space, or set KDISTILL_OUTPUTS to a directory on a larger disk, and run again")


def _reraise_clean(exc: BaseException, target: Path, tmp: Path) -> None:
    """Called while a write into `tmp` fails: a full disk becomes a one-line error; the caller removes `tmp`."""
    if isinstance(exc, Exception) and not isinstance(exc, KdistillError) and is_disk_full(exc, tmp):
        _remove(tmp)
        raise disk_full_error(target, tmp) from exc


def _remove_stale(target: Path) -> None:
    """Temporary siblings of `target` left by a process that was killed (its pid no longer runs)."""
    for kind in ("tmp", "old"):
        for stale in target.parent.glob(f".{target.name}.{kind}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                _remove(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
    _remove_stale(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        _reraise_clean(exc, target, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path):
    """Yield a temporary sibling path to write; on success it replaces `target`, on failure it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        _reraise_clean(exc, target, tmp)
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
