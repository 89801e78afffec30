"""The flow's scheduler on a tiny DVC project: independent stages overlap, DVC records each one, failures leave nothing.

Uses the real pieces (stage graph from DVC, `dvc status` / `dvc commit` through DvcRecord, the scheduler) with a
thread pool in place of Prefect's, so it runs in seconds; the smoke-profile test covers the Prefect flow end to end.
"""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipelines.dvc_record import DVC, DvcRecord
from pipelines.flow import execute_stage, schedule, stale_plan, timeline
from pipelines.stage_graph import load_stages

PY = sys.executable
WRITE = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(open(sys.argv[2]).read() + '{tag}')"
# a and b each announce that they started, then wait for the other: they can only both finish if they overlap
MEET = ("import pathlib, sys, time; m = pathlib.Path(sys.argv[3]); (m / '{tag}').touch(); t = time.time()\n"
        "while not (m / '{other}').exists():\n"
        "    time.sleep(0.1)\n"
        "    if time.time() - t > 120: sys.exit('never met {other}')\n"
        "pathlib.Path(sys.argv[1]).write_text(open(sys.argv[2]).read() + '{tag}')")


def _project(tmp_path: Path, fail_c: bool = False, meet: bool = True) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    markers = tmp_path / "markers"
    markers.mkdir()
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=root, check=True)
    (root / "src.txt").write_text("x")

    def cmd(tag, out, src, other=None):
        code = MEET.format(tag=tag, other=other) if other and meet else WRITE.format(tag=tag)
        return f'{PY} -c "{code}" {out} {src} {markers}'

    stages = {
        "a": {"cmd": cmd("a", "a.txt", "src.txt", other="b"), "deps": ["src.txt"], "outs": ["a.txt"]},
        "b": {"cmd": cmd("b", "b.txt", "src.txt", other="a"), "deps": ["src.txt"], "outs": ["b.txt"]},
        "c": {"cmd": "exit 3" if fail_c else cmd("c", "c.txt", "a.txt"), "deps": ["a.txt"], "outs": ["c.txt"]},
        "d": {"cmd": cmd("d", "d.txt", "c.txt"), "deps": ["c.txt", "b.txt"], "outs": ["d.txt"]},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return root


class CountingRecord(DvcRecord):
    """DvcRecord that counts the `dvc status` calls the stages make."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.asked: list[str] = []

    def stale(self, target: str) -> bool:
        self.asked.append(target)
        return super().stale(target)


def _run(root: Path, tmp_path: Path, max_parallel: int = 2, record: DvcRecord | None = None):
    """As the flow runs a graph: one `dvc status` of the graph first, then the scheduler."""
    stages = load_stages(root / "dvc.yaml", root=root)
    record = record or DvcRecord(root)
    plan = stale_plan(stages, record)
    with ThreadPoolExecutor(max_parallel) as pool:
        return schedule(stages, max_parallel, 2, lambda st, threads: pool.submit(
            execute_stage, st, threads, None, record, tmp_path / "logs", None, None, plan[st.name]))


def _lock(root: Path) -> dict:
    f = root / "dvc.lock"
    return yaml.safe_load(f.read_text())["stages"] if f.is_file() else {}


def test_graph_comes_from_dvc_yaml(tmp_path):
    stages = load_stages(_project(tmp_path) / "dvc.yaml", root=tmp_path / "proj")
    assert stages["a"].upstream == set() and stages["b"].upstream == set()
    assert stages["c"].upstream == {"a"} and stages["d"].upstream == {"b", "c"}


@pytest.mark.slow
def test_independent_stages_overlap_and_every_stage_is_recorded(tmp_path):
    root = _project(tmp_path)
    record = CountingRecord(root)
    results, errors = _run(root, tmp_path, record=record)
    assert not errors and record.asked == []  # nothing was ever run: every stage is stale whatever runs before it
    tl = timeline(results)["stages"]
    # a and b depend only on src.txt: they ran at the same time (each waited for the other), one CPU each. The raw
    # clock times, not the timeline's 0.1 s rounding: on a fast machine both start and end within one rounding step
    ran = {k: results[k] for k in ("a", "b")}
    assert ran["a"]["start"] < ran["b"]["end"] and ran["b"]["start"] < ran["a"]["end"]
    assert tl["a"]["threads"] == tl["b"]["threads"] == 1
    assert tl["d"]["start"] >= max(tl["b"]["end"], tl["c"]["end"])  # never before its inputs
    assert set(_lock(root)) == {"a", "b", "c", "d"}
    assert DvcRecord(root).status() == {}  # `dvc status` clean after the concurrent run
    assert (root / "d.txt").read_text() == "xacd"
    # nothing changed: the second run skips every stage on the word of its one `dvc status` of the graph
    record = CountingRecord(root)
    results, errors = _run(root, tmp_path, record=record)
    assert not errors and not any(r["ran"] for r in results.values()) and record.asked == []
    # one stage's command changed: only it and what reads its output run again
    stages_src = yaml.safe_load((root / "dvc.yaml").read_text())
    stages_src["stages"]["b"]["cmd"] = f'{PY} -c "{WRITE.format(tag="B")}" b.txt src.txt'

    (root / "dvc.yaml").write_text(yaml.safe_dump(stages_src))
    stages = load_stages(root / "dvc.yaml", root=root)
    # b stale whatever happens; a and c up to date and skipped; d reads b's output: it asks DVC in its turn
    assert stale_plan(stages, DvcRecord(root)) == {"a": False, "b": True, "c": False, "d": None}
    record = CountingRecord(root)
    results, errors = _run(root, tmp_path, record=record)
    assert not errors and {k for k, r in results.items() if r["ran"]} == {"b", "d"}
    # b's command changed: stale whatever happens; a and c current: no `dvc status` for any of them. d was current
    # when the run started, but it reads b's output: its task asked DVC after b ran
    assert record.asked == ["d"]
    assert (root / "d.txt").read_text() == "xacd" and (root / "b.txt").read_text() == "xB"
    # b computes with the thread count it had beside a, though a is skipped now: its bytes cannot depend on that
    assert timeline(results)["stages"]["b"]["threads"] == 1
    # a's output deleted: a runs again and writes the same bytes, so c and d, which ask DVC in their turn, are skipped
    (root / "a.txt").unlink()
    record = CountingRecord(root)
    results, errors = _run(root, tmp_path, record=record)
    assert not errors and {k for k, r in results.items() if r["ran"]} == {"a"}
    assert sorted(record.asked) == ["c", "d"]


def test_a_failed_stage_leaves_no_lock_entry_and_blocks_only_what_follows(tmp_path):
    root = _project(tmp_path, fail_c=True)
    results, errors = _run(root, tmp_path)
    assert set(errors) == {"c"} and "stage c failed (exit 3" in str(errors["c"])
    assert "d" not in results  # never started: its input is missing
    assert set(_lock(root)) == {"a", "b"}  # the stages that finished are recorded, the failed one is not
    assert not (root / "c.txt").exists() and not (root / "d.txt").exists()
    assert set(DvcRecord(root).status()) == {"c", "d"}


def test_max_parallel_one_runs_stages_one_after_another(tmp_path):
    root = _project(tmp_path, meet=False)
    results, errors = _run(root, tmp_path, max_parallel=1)
    assert not errors
    spans = sorted((v["start"], v["end"]) for v in timeline(results)["stages"].values())
    assert all(prev_end <= start for (_, prev_end), (start, _) in zip(spans, spans[1:]))
    assert all(v["threads"] == 2 for v in timeline(results)["stages"].values())


def test_threads_are_fixed_by_the_graph_not_by_what_runs_beside():
    """A stage that can never run beside another gets every CPU; the others one share each, whatever is stale."""
    from pipelines.flow import stage_threads

    stages = {n: SimpleNamespace(upstream=set(u), downstream=set()) for n, u in
              {"prep": "", "a": {"prep"}, "b": {"prep"}, "c": {"a"}, "end": {"b", "c"}}.items()}
    for n, st in stages.items():
        for u in st.upstream:
            stages[u].downstream.add(n)
    assert stage_threads(stages, 2, 2) == {"prep": 2, "a": 1, "b": 1, "c": 1, "end": 2}
    assert stage_threads(stages, 2, 8) == {"prep": 8, "a": 4, "b": 4, "c": 4, "end": 8}
    assert stage_threads(stages, 1, 2) == {n: 2 for n in stages}


def test_the_longest_remaining_chain_starts_first_when_stage_times_are_known():
    from concurrent.futures import Future

    from pipelines.flow import critical_path
    from pipelines.stage_graph import Stage

    def st(name, up=()):
        return Stage(name, name, "true", Path("."), [], [], set(up))

    stages = {"prep": st("prep"), "short": st("short", ["prep"]), "long": st("long", ["prep"]),
              "end": st("end", ["short", "long"])}
    for s in stages.values():
        for u in s.upstream:
            stages[u].downstream.add(s.name)
    assert critical_path(stages) == {"prep": 3.0, "short": 2.0, "long": 2.0, "end": 1.0}
    started = []

    def submit(stage, threads):
        started.append(stage.name)
        f = Future()
        f.set_result({"ran": False})
        return f

    schedule(stages, 1, 2, submit)  # no times known: dvc.yaml order breaks the tie
    assert started == ["prep", "short", "long", "end"]
    started.clear()
    schedule(stages, 1, 2, submit, seconds={"prep": 10, "short": 50, "long": 500, "end": 60})
    assert started == ["prep", "long", "short", "end"]


FAILING_FLOW = '''
import sys
from pathlib import Path
from prefect import flow
from pipelines.dvc_record import DvcRecord
from pipelines.flow import result_of, run_stage
from pipelines.stage_graph import load_stages

root, logs = Path(sys.argv[1]), Path(sys.argv[2])
stages = load_stages(root / "dvc.yaml", root=root)

@flow
def two_failures():
    futures = {n: run_stage.submit(stages[n], 1, None, DvcRecord(root), logs, None, True) for n in stages}
    return {n: f.state.type.value + ": " + str(f.state.message) for n, f in ((n, f.wait() or f) for n, f in futures.items())}

print("STATES", result_of(two_failures(return_state=True)))
'''


@pytest.mark.slow
def test_a_refusing_stage_fails_its_task_with_its_line_and_a_crash_is_tried_again_then_shows_its_log(tmp_path):
    """Through Prefect: a stage that exits with the project's error status (2) after its `error:` line fails its task
    run with that line as the message, once, without a traceback; a stage that crashes (any other exit) runs once
    more, then fails with the last lines of its log and the log's path."""
    root = tmp_path / "proj"
    root.mkdir()
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=root, check=True)
    count = "import pathlib; f = pathlib.Path('{0}.runs'); f.write_text(f.read_text() + 'x' if f.exists() else 'x'); "
    refuse = count.format("refuse") + "print('working'); import sys; print('error: data.x: 3 is not a y', file=sys.stderr); sys.exit(2)"
    crash = count.format("crash") + "[print(f'step {i}') for i in range(20)]; raise RuntimeError('out of cheese')"
    stages = {"refuse": {"cmd": f'{PY} -c "{refuse}"', "outs": ["r.txt"]},
              "crash": {"cmd": f'{PY} -c "{crash}"', "outs": ["c.txt"]}}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    env = {**__import__("os").environ, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    proc = subprocess.run([PY, "-c", FAILING_FLOW, str(root), str(tmp_path / "logs")], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent)
    out = proc.stdout + proc.stderr
    assert (root / "refuse.runs").read_text() == "x" and (root / "crash.runs").read_text() == "xx", out[-3000:]
    states = out[out.index("STATES"):]
    assert f"stage refuse failed (exit 2): data.x: 3 is not a y (full log: {tmp_path / 'logs' / 'refuse.log'})" in states
    # the crash: its last lines (the traceback of the stage's own code is in its log and shown), and the log's path
    assert "stage crash failed (exit 1)" in states and "RuntimeError: out of cheese" in states
    assert f"(full log: {tmp_path / 'logs' / 'crash.log'})" in states
    # Prefect prints no traceback of its own or of the flow's code for either
    assert "prefect/task_engine.py" not in out and "pipelines/flow.py" not in out, out[-3000:]
