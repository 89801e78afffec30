"""The README's results tables, written from reports/summary.json (evaluate) and reports/deploy.json (export), and
for each profile in PROFILES from reports/<profile>/ (copied there from outputs-<profile>/reports by a quiet run).

    python scripts/results_table.py           # rewrite the table between the README's results markers
    python scripts/results_table.py --check   # exit 1 when the README's table is not what the reports say

tests/test_docs.py runs the check, so the README cannot quote a number the reports do not hold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start (scripts/results_table.py writes this table) -->", "<!-- results:end -->"
PROFILES = ("bbc-news",)  # profiles whose committed reports the README quotes too


def markers(profile: str | None) -> tuple[str, str]:
    if profile is None:
        return START, END
    return f"<!-- results-{profile}:start (scripts/results_table.py writes this table) -->", f"<!-- results-{profile}:end -->"


def table(summary: dict, deploy: dict) -> str:
    """Markdown: every model's dev score, retention, size and compute, eager speed (evaluate, timed in turns) and
    the registered ONNX Runtime variant's speed (export, timed in turns with one thread)."""
    metric, ref = summary["metric"], deploy["reference_shape"]
    seq = ref.split("_seq")[1]
    timing = deploy["timing"][ref]
    teacher_onnx = {v: timing[f"teacher/{v}"]["p50"] for v in ("onnx-fp32", "onnx-int8") if f"teacher/{v}" in timing}
    lines = [
        f"| model | dev {metric} | of teacher | params | FLOPs | PyTorch speedup | served as | ONNX ms | ONNX speedup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in summary["models"].items():
        served = ms = speed = "-"
        d = deploy["models"].get(name)
        if d is not None:
            variant = d.get("registered_variant") or "onnx-fp32"  # the teacher: its fp32 graph, for reference
            served = variant.removeprefix("onnx-") if name != "teacher" else "-"
            ms = f"{timing[f'{name}/{variant}']['p50']:.2f}"
            speed = f"{teacher_onnx[variant] / timing[f'{name}/{variant}']['p50']:.2f}x"
        lines.append(f"| {name} | {m['score']:.4f} | {m['retention']:.1%} | {m['params'] / 1e6:.1f}M | "
                     f"{m['flops_ratio']:.3f} | {m['speedup']:.2f}x | {served} | {ms} | {speed} |")
    lines += ["", f"Dev split of {summary['task']}; FLOPs relative to the teacher at {seq} tokens; speed at batch 1 x "
              f"{seq} tokens, p50: PyTorch eager with {summary['threads']} thread(s) in {summary['precision']}, ONNX "
              f"Runtime with {deploy['threads']} thread(s), each model against the teacher in the same variant; "
              f"CPU capability {summary['cpu_capability']}. Baselines: the same students trained without a teacher."]
    return "\n".join(lines)


def render(readme: str, reports: Path) -> str:
    for profile in (None, *PROFILES):
        src = reports if profile is None else reports / profile
        if profile is not None and not (src / "summary.json").is_file():
            continue
        summary = json.loads((src / "summary.json").read_text())
        deploy = json.loads((src / "deploy.json").read_text())
        start, end = markers(profile)
        if start not in readme or end not in readme:
            raise SystemExit(f"README.md: the markers {start!r} and {end!r} are missing")
        head, rest = readme.split(start, 1)
        _, tail = rest.split(end, 1)
        readme = f"{head}{start}\n{table(summary, deploy)}\n{end}{tail}"
    return readme


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 when the README differs")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--reports", type=Path, default=ROOT / "reports")
    a = ap.parse_args()
    now = a.readme.read_text()
    want = render(now, a.reports)
    if a.check:
        if now != want:
            print(f"{a.readme}: the results table differs from {a.reports}/summary.json and deploy.json; run "
                  "`python scripts/results_table.py`", file=sys.stderr)
            sys.exit(1)
        return
    if now != want:
        a.readme.write_text(want)
        print(f"{a.readme}: results table rewritten")


if __name__ == "__main__":
    main()
