"""Stage commands forked from one warm interpreter instead of each started anew.

A stage is `python -m tasks.<step>`. Starting one costs 8-12 s of CPU importing torch, transformers, datasets and
MLflow before it does any work: most of a small profile's stage, and about 3 CPU-minutes of a default run. So the flow
starts one server per run (`python -m pipelines.stage_zygote <socket>`) that imports those libraries once and then
forks a child per stage command. The child takes the stage's environment, working directory and arguments and runs
the module as `python -m` would (runpy), its output on a pipe to the flow, its exit status sent back when it ends.

What keeps a forked stage the same as a fresh one:
- only third-party libraries are preloaded, none of which keeps per-stage state from its import; our own code
  (kdistill, tasks) is imported in the child;
- the server starts with the environment every stage shares, and serves only while importing started no Python
  thread (a fork copies only the thread that forks: one holding a lock elsewhere would leave it held; the native
  pools that NumPy's and SciPy's OpenBLAS and jemalloc start at load re-arm themselves in a fork, through
  pthread_atfork, as they do for every PyTorch DataLoader worker). Otherwise, or for any command that is not
  `<this python> -m <module> ...`, stages start as plain subprocesses;
- the child re-seeds Python's, NumPy's and torch's global generators from the OS as a new interpreter would, and
  runs the exit handlers a new interpreter would run.

The server is in the flow's process group, so a kill -9 of the pipeline takes it and its stages along; when the
flow ends any other way, the server sees its stdin close and exits.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# the imports that cost a stage most of its start (python -X importtime of tasks.task_distill)
PRELOAD = ("numpy", "torch", "scipy.stats", "sklearn.metrics", "pandas", "datasets", "safetensors.torch",
           "transformers", "transformers.modeling_utils", "transformers.models.auto.modeling_auto", "mlflow",
           "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "torchmetrics.functional.text.squad", "tqdm")
_SHELL = set("|&;<>`$(){}*?")  # a command that needs a shell never goes through the server
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_server: Zygote | None = None
_early: Zygote | None = None  # started by `early`, not yet taken over by `serving`


# --- the server --------------------------------------------------------------------------------------------------

def _reseed() -> None:
    """Seed the global generators from the OS, as a new interpreter's are (every child would share the server's)."""
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


def _run_child(request: dict, out_fd: int) -> None:
    """In the forked stage process: become `python -m <module> <args>` in the stage's environment; never returns."""
    import atexit
    import runpy
    import traceback

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the stage waits for its own subprocesses
    signal.signal(signal.SIGINT, signal.default_int_handler)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(out_fd)
    os.close(devnull)
    # what a new interpreter writing to a pipe has: stdout block-buffered, stderr line-buffered
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    if request["cwd"] not in sys.path:
        sys.path.insert(0, request["cwd"])  # `python -m` puts the working directory first
    sys.argv = [request["module"], *request["args"]]
    _reseed()
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - reported as a new interpreter would: traceback, exit 1
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code & 0xFF)


def _serve_request(conn: socket.socket) -> None:
    """In a child of the server: fork the stage, wait for it, send its exit status; never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the stage; this one still reports it
    code = 1
    try:
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 22, 1)
        request = json.loads(msg.decode())
        pid = os.fork()
        if pid == 0:
            conn.close()
            _run_child(request, fds[0])
        os.close(fds[0])
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    finally:
        with contextlib.suppress(OSError):
            conn.sendall(f"{code}\n".encode())
        os._exit(0)


def serve(path: str) -> None:
    """The server: preload, say `ready` (or why not) on stdout, then fork for each connection until stdin closes."""
    failed = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a missing library is imported (or not) by the stage itself
            failed.append(f"{name}: {exc}")
    if threading.active_count() != 1:
        print(f"refused: importing the libraries started Python threads: {threading.enumerate()}", flush=True)
        return
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        print("refused: importing the libraries initialised CUDA, which a forked process cannot use", flush=True)
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the per-request children are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready" + (f" (not preloaded: {'; '.join(failed)})" if failed else ""), flush=True)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                if not os.read(sys.stdin.fileno(), 4096):
                    return  # the flow is gone
                continue
            conn, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                _serve_request(conn)
            conn.close()


# --- the flow's side ---------------------------------------------------------------------------------------------

class Zygote:
    """The run's stage server, started by the first stage command; `start` hands it one."""

    def __init__(self, env: dict):
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._dir = self.path = None
        self._ready: bool | None = None
        self._lock = threading.Lock()

    def spawn(self) -> None:
        """Start the server process without waiting for it (its imports then overlap what the flow does meanwhile)."""
        if self.proc is None:
            self._dir = tempfile.mkdtemp(prefix="kdistill-stages-")
            self.path = os.path.join(self._dir, "server.sock")
            self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.stage_zygote", self.path], env=self.env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ready(self) -> bool:
        """Started by the first stage command unless spawned early (a run whose stages are all skipped, or sent to a
        work pool, imports nothing); waits for the server's first line."""
        with self._lock:
            if self._ready is None:
                self.spawn()
                line = self.proc.stdout.readline().strip()
                self._ready = line.startswith("ready")
                print(f"stage commands fork from the stage server: {line}" if self._ready else
                      f"stages start as subprocesses: the stage server {line or 'did not start'}", flush=True)
            return self._ready

    def start(self, argv: list[str], cwd: str, env: dict):
        """(the stage's output as a text stream, a function returning its exit status), or None to use a
        subprocess."""
        if not self.ready():
            return None
        r, w = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            request = {"module": argv[2], "args": argv[3:], "cwd": str(cwd), "env": env}
            socket.send_fds(conn, [json.dumps(request).encode()], [w])
        except OSError:
            conn.close()
            os.close(r)
            return None
        finally:
            os.close(w)

        def wait() -> int:
            with conn:
                said = conn.makefile().readline().strip()
            return int(said) if said.lstrip("-").isdigit() else 1

        return io.open(r, "r", encoding="utf-8", errors="replace"), wait

    def close(self) -> None:
        if self.proc is None:
            return
        if self._ready is None:  # spawned early, never used: it may still be importing
            self.proc.kill()
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


def module_command(cmd: str, wdir: str | Path) -> tuple[dict[str, str], list[str]] | None:
    """`cmd` as (its leading `NAME=value` assignments, [python, -m, module, args...]) when it is this interpreter
    running a module (a profile's stages set KDISTILL_PARAMS and KDISTILL_OUTPUTS that way), else None."""
    if any(c in _SHELL for c in cmd):
        return None
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    assigned = {}
    while words and _ASSIGNMENT.match(words[0]):
        name, value = words.pop(0).split("=", 1)
        assigned[name] = value
    if len(words) < 3 or words[1] != "-m":
        return None
    python = Path(wdir, words[0])
    me = Path(sys.executable)
    if python.name != me.name or python.parent.resolve() != me.parent.resolve():
        return None
    return assigned, words


def current() -> Zygote | None:
    return _server


def _enabled() -> bool:
    return os.environ.get("KDISTILL_STAGE_SERVER", "1") != "0" and hasattr(socket, "send_fds") and os.name == "posix"


@contextlib.contextmanager
def early(env: dict):
    """Start the stage server now, for a run known to have stages to run here: its 10 s of imports then overlap the
    Prefect server's start. `serving` inside takes it over; unused, it is stopped on the way out."""
    global _early
    _early = Zygote(env) if _enabled() else None
    if _early is not None:
        _early.spawn()
    try:
        yield
    finally:
        unused, _early = _early, None
        if unused is not None:
            unused.close()


@contextlib.contextmanager
def serving(env: dict):
    """A stage server for the stage commands run meanwhile in this process (run_command uses it): the one started
    `early`, if any, else one started by the first stage command."""
    global _server, _early
    if not _enabled():
        yield None
        return
    mine, _early = _early or Zygote(env), None
    outer, _server = _server, mine
    try:
        yield mine
    finally:
        _server = outer  # a nested run hands the outer one's server back
        mine.close()


if __name__ == "__main__":
    serve(sys.argv[1])
