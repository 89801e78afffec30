"""The README's results tables, written from reports/summary.json (evaluate) and reports/deploy.json (export), and
for each profile in PROFILES from reports/<profile>/ (copied there from outputs-<profile>/reports by a quiet run).
With a reports/seeds.json of the same pipeline run (`make seeds`), a column gives each model's mean and standard
deviation over the seeds.

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
PROFILES = ("bbc-news", "ner", "squad")  # profiles whose committed reports the README quotes too


def markers(profile: str | None) -> tuple[str, str]:
    if profile is None:
        return START, END
    return f"<!-- results-{profile}:start (scripts/results_table.py writes this table) -->", f"<!-- results-{profile}:end -->"


def seeds_of(summary: dict, seeds: dict | None, source: Path) -> dict | None:
    """The seeds study's per-model statistics, when it read this pipeline run (its shared cell's scores are this
    summary's); None without a study. A study of another run is an error: the table would mix two runs."""
    if seeds is None:
        return None
    own = next((c for c in seeds["cells"] if c["shared_with_pipeline"]), None)
    stale = [n for n, m in (own or {}).get("models", {}).items()
             if n in summary["models"] and abs(m["score"] - summary["models"][n]["score"]) > 1e-12]
    if own is None or stale:
        why = ", ".join(stale) or "no shared cell"
        raise SystemExit(f"{source}: computed from another pipeline run than summary.json ({why}); run `make seeds` "
                         "again")
    return seeds["models"]


def table(summary: dict, deploy: dict, seeds: dict | None = None) -> str:
    """Markdown: every model's dev score, retention, size and compute, eager speed (evaluate, timed in turns) and
    the registered ONNX Runtime variant's speed (export, timed in turns with one thread); with `seeds`, each
    model's mean ± standard deviation over the seeds study's seeds."""
    metric, ref = summary["metric"], deploy["reference_shape"]
    seq = ref.split("_seq")[1]
    timing = deploy["timing"][ref]
    teacher_onnx = {v: timing[f"teacher/{v}"]["p50"] for v in ("onnx-fp32", "onnx-int8") if f"teacher/{v}" in timing}
    n_seeds = next(iter(seeds.values()))["score"]["n"] if seeds else 0
    seed_head = f" {n_seeds} seeds: mean ± std (of teacher) |" if seeds else ""
    lines = [
        f"| model | dev {metric} | of teacher |{seed_head} params | FLOPs | PyTorch speedup | served as | ONNX ms | "
        "ONNX speedup |",
        "|---|---|---|" + ("---|" if seeds else "") + "---|---|---|---|---|---|",
    ]
    for name, m in summary["models"].items():
        served = ms = speed = "-"
        d = deploy["models"].get(name)
        if d is not None:
            variant = d.get("registered_variant") or "onnx-fp32"  # the teacher: its fp32 graph, for reference
            served = variant.removeprefix("onnx-") if name != "teacher" else "-"
            ms = f"{timing[f'{name}/{variant}']['p50']:.2f}"
            speed = f"{teacher_onnx[variant] / timing[f'{name}/{variant}']['p50']:.2f}x"
        seed_cell = ""
        if seeds:
            st = seeds.get(name)
            seed_cell = (f" {st['score']['mean']:.4f} ± {st['score']['std']:.4f} ({st['retention']['mean']:.1%}) |"
                         if st else " - |")
        lines.append(f"| {name} | {m['score']:.4f} | {m['retention']:.1%} |{seed_cell} {m['params'] / 1e6:.1f}M | "
                     f"{m['flops_ratio']:.3f} | {m['speedup']:.2f}x | {served} | {ms} | {speed} |")
    # evaluate times PyTorch at its own first shape (evaluate.seq_lens), export ONNX at export.seq_lens' first
    eager_seq = next(iter(summary["models"]["teacher"]["latency_ms"])).split("_seq")[1].split("_")[0]
    shapes = (f"speed at batch 1 x {seq} tokens, p50: PyTorch eager" if eager_seq == seq else
              f"speed at batch 1, p50: PyTorch eager at {eager_seq} tokens")
    onnx_at = "" if eager_seq == seq else f" at {seq} tokens"
    lines += ["", f"Dev split of {summary['task']}; FLOPs relative to the teacher at {eager_seq} tokens; {shapes} with "
              f"{summary['threads']} thread(s) in {summary['precision']}, ONNX Runtime{onnx_at} with {deploy['threads']} "
              f"thread(s), each model against the teacher in the same variant; CPU capability "
              f"{summary['cpu_capability']}. Baselines: the same students trained without a teacher."]
    return "\n".join(lines)


def render(readme: str, reports: Path) -> str:
    for profile in (None, *PROFILES):
        src = reports if profile is None else reports / profile
        if profile is not None and not (src / "summary.json").is_file():
            continue
        summary = json.loads((src / "summary.json").read_text())
        deploy = json.loads((src / "deploy.json").read_text())
        seeds_file = src / "seeds.json"
        seeds = seeds_of(summary, json.loads(seeds_file.read_text()) if seeds_file.is_file() else None, seeds_file)
        start, end = markers(profile)
        if start not in readme or end not in readme:
            raise SystemExit(f"README.md: the markers {start!r} and {end!r} are missing")
        head, rest = readme.split(start, 1)
        _, tail = rest.split(end, 1)
        readme = f"{head}{start}\n{table(summary, deploy, seeds)}\n{end}{tail}"
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
