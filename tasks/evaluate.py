"""Step 6, evaluate: dev metrics, CPU speed and size of teacher, students and baselines; report, loss plots.

The export stage (tasks/export.py) follows: ONNX variants, their timing, the score-vs-latency plot, the registry."""

import csv
import json
from pathlib import Path

import mlflow
import torch
from datasets import load_from_disk

from kdistill.data.task import load_task
from kdistill.deploy.speed import interleaved_profiles, model_profile
from kdistill.io import write_json_atomic, write_text_atomic
from kdistill.models import load_model
from kdistill.recipes import RECIPES
from kdistill.train.evaluation import score
from kdistill.train.precision import resolve_threads

from .common import EvalRows, cli, precision_for, runtime, setup, stage_run

PUBLISHED = [  # reference rows: published, not measured here (see data/glue and README)
    ("BERT-base (DistilBERT paper, dev)", {"sst2": 92.7, "cola": 56.3, "mrpc": 88.6, "rte": 69.3, "stsb": 89.0}, "110M", "1.0x"),
    ("DistilBERT-6 (DistilBERT paper, dev)", {"sst2": 91.3, "cola": 51.3, "mrpc": 87.5, "rte": 59.9, "stsb": 86.9}, "66M", "1.6x"),
    ("TinyBERT-4 (TinyBERT paper, test)", {"sst2": 92.6, "cola": 44.1, "mrpc": 86.4, "rte": 66.6, "stsb": 80.4}, "14.5M", "9.4x"),
]


def models(paths, recipes: list[str], init_controls: tuple[str, ...] = ()):
    yield "teacher", paths.teacher
    for r in recipes:  # base.recipes
        yield f"{r}", paths.student(r)
        yield f"baseline-{r}", paths.baseline(r)
        if r in init_controls:  # task_distill.teacher_init_controls
            yield f"teacher-init-{r}", paths.init_control(r)


def plot_losses(paths, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for f in sorted((paths.reports / "losses").glob("*.csv")):
        rows = list(csv.DictReader(open(f)))
        if not rows:
            continue
        comps = [k for k in rows[0] if k not in ("step", "lr")]
        fig, ax = plt.subplots(figsize=(7, 4))
        for c in comps:
            pts = [(int(r["step"]), float(r[c])) for r in rows if r.get(c) not in (None, "")]
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=c, lw=1)
        ax.set_title(f"{f.stem}: loss components per step")
        ax.set_xlabel("optimizer step")
        ax.set_yscale("log")
        ax.legend()
        png = out_dir / f"losses_{f.stem}.png"
        fig.tight_layout()
        fig.savefig(png, dpi=90)
        plt.close(fig)
        made.append(png)
    return made


TIMING = ("eager PyTorch, measured in turns: each of {rounds} rounds runs every model once, in a shuffled order, on "
          "the same inputs, so anything else running on the machine slows every model alike and the speedups hold")


def compare(summary: dict, seq: int) -> str:
    """Each model against the teacher: retention (score), speedup (batch 1 p50 at `seq` tokens), FLOPs and size
    ratios. Returns the latency key the speedup is read at."""
    t = summary["models"]["teacher"]
    ref = f"bs1_seq{seq}_p50"
    for m in summary["models"].values():
        m["retention"] = m["score"] / t["score"] if t["score"] else None
        m["speedup"] = t["latency_ms"][ref] / m["latency_ms"][ref]
        m["flops_ratio"] = m["flops"][f"seq{seq}"] / t["flops"][f"seq{seq}"]
        m["params_ratio"] = m["params"] / t["params"]
    return ref


def main() -> None:
    p, paths = setup("evaluate")
    task = load_task(paths.data)
    e = p.evaluate
    rows = EvalRows(load_from_disk(str(paths.data / "dev")), paths.teacher, p.base.max_seq_len, task.doc_stride)
    rep = paths.reports
    rep.mkdir(parents=True, exist_ok=True)
    precision = precision_for(p, e.precision)
    rt = runtime()
    timed_threads = resolve_threads(e.threads)  # scoring keeps the stage's threads (and so its sums)
    summary = {"task": p.base.task, "metric": task.metric, "threads": timed_threads, "precision": precision,
               "device": rt.device, "cpu_capability": rt.cpu_capability, "models": {}}
    with stage_run(p, "evaluate"):
        loaded = {}
        for name, d in models(paths, p.base.recipes, p.task_distill.teacher_init_controls):
            if not d.is_dir():
                print(f"[evaluate] skipping {name}: {d} missing")
                continue
            model = load_model(task.model_class, d).eval()
            metrics = score(model, rows.for_model(d), task, precision)
            summary["models"][name] = {"task": p.base.task, "metric": task.metric, "score": metrics[task.metric],
                                       "metrics": metrics, **model_profile(model, d, e.seq_lens)}
            loaded[name] = model
            print(f"[evaluate] {name}: {task.metric} {metrics[task.metric]:.4f}, "
                  f"params {summary['models'][name]['params']:,}")
        print(f"[evaluate] timing {len(loaded)} models in turns ({e.repeats} rounds per batch x length, "
              f"{timed_threads} thread(s))", flush=True)
        scoring_threads = torch.get_num_threads()
        torch.set_num_threads(timed_threads)
        try:
            timed = interleaved_profiles(loaded, e.batch_sizes, e.seq_lens, e.warmup, e.repeats, precision)
        finally:
            torch.set_num_threads(scoring_threads)
        for name, t in timed.items():
            summary["models"][name].update(t)
        summary["timing"] = TIMING.format(rounds=e.repeats)
        ref = compare(summary, e.seq_lens[0])
        for name, m in summary["models"].items():
            mlflow.log_metrics({f"{name}/score": m["score"], f"{name}/speedup": m["speedup"],
                                f"{name}/retention": m["retention"] or 0.0, f"{name}/size_mb": m["size_mb"]})
        write_json_atomic(rep / "summary.json", summary)
        pngs = plot_losses(paths, rep)
        aug_file = rep / "augment.json"
        augment = json.loads(aug_file.read_text()) if aug_file.is_file() else None
        stats = json.loads((paths.data / "stats.json").read_text()) if (paths.data / "stats.json").is_file() else None
        write_text_atomic(rep / "report.md", report_md(summary, ref, pngs, rep, augment, stats))
        for f in [rep / "summary.json", rep / "report.md", *pngs]:
            mlflow.log_artifact(str(f))
    print(f"[evaluate] wrote {rep / 'summary.json'} and {rep / 'report.md'}")


def controls_md(summary: dict) -> list[str]:
    """What distillation buys, per recipe: the student against its two controls, both trained on the same rows with
    the same budget and no teacher: the no-teacher control starts from the general student (the difference is what
    task distillation adds), the teacher-initialised one from where the general stage starts (the difference is
    what the whole recipe adds over fine-tuning the cut-down teacher)."""
    ms = summary["models"]
    rows = [r for r in RECIPES if r in ms and f"teacher-init-{r}" in ms]
    if not rows:
        return []
    metric = summary["metric"]
    lines = ["", "## What distillation buys", "",
             f"Dev {metric}, one seed (`make seeds` gives the spread). Both controls train the student's shape on the same "
             "rows with the same budget (task_distill.baseline), gold labels only. The no-teacher control starts from "
             "the general student, so the student's lead over it is what task distillation adds; the "
             "teacher-initialised control starts from the teacher's weights as the general stage does, so the lead over "
             "it is what general and task distillation add together.", "",
             "| recipe | student | no-teacher control | teacher-initialised control | task distillation adds | "
             "general + task distillation add |", "|---|---|---|---|---|---|"]
    for r in rows:
        s, b = ms[r]["score"], ms.get(f"baseline-{r}", {}).get("score")
        i = ms[f"teacher-init-{r}"]["score"]
        lines.append(f"| {r} | {s:.4f} | " + (f"{b:.4f}" if b is not None else "-") + f" | {i:.4f} | "
                     + (f"{s - b:+.4f}" if b is not None else "-") + f" | {s - i:+.4f} |")
    return lines


def augment_md(a: dict) -> list[str]:
    """The training split's augmentation: method, rate and a sample of original/augmented pairs."""
    lines = ["", "## Augmentation", "",
             f"Method `{a['method']}`, {a['copies']} cop{'y' if a['copies'] == 1 else 'ies'} per example, word "
             f"replacement probability {a['aug_p']}: {a['augmented_sentences']:,} augmented sentences "
             f"({a['sentences_per_s']} sentences/s), {a['rows']:,} training rows from {a['original_rows']:,}."]
    if a["samples"]:
        lines += ["", "| original | augmented |", "|---|---|"]
        cell = lambda t: t.replace("|", "\\|")  # noqa: E731
        for s in a["samples"]:
            lines.append(f"| {cell(s['sentence1_original'])} | {cell(s['sentence1_augmented'])} |")
    return lines


def data_md(stats: dict) -> list[str]:
    """The rows each model learnt from and was scored on: class balance and train/dev overlap (prepare's record)."""
    lines = ["", "## Data", "", f"{stats.get('kind', 'single_label').replace('_', '-')} task, train {stats['train']} rows, "
             f"dev {stats['dev']} rows."]
    for split, counts in (stats.get("label_counts") or {}).items():
        if counts and stats.get("kind") == "extractive_qa":  # questions, contexts, answer lengths: counts, not shares
            lines.append(f"- {split}: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
        elif counts:
            total = sum(counts.values()) or 1
            lines.append(f"- {split}: " + ", ".join(f"{n} {c} ({c / total:.1%})" for n, c in counts.items()))
    overlap = stats.get("train_dev_overlap")
    if overlap:
        lines.append(f"- {overlap} dev rows have the same text as a train row: their score measures memory, not skill.")
    return lines


def report_md(summary, ref, pngs, rep, augment: dict | None = None, stats: dict | None = None) -> str:
    task, metric = summary["task"], summary["metric"]
    lines = [f"# Distillation report: {task}", "",
             f"Dev {metric}; latency at batch 1, {ref.split('_')[1].removeprefix('seq')} tokens, p50, {summary['threads']} threads; "
             f"precision {summary.get('precision', 'fp32')} on {summary.get('device', 'cpu')} "
             f"(CPU capability {summary.get('cpu_capability', '?')}). Timing: {summary.get('timing', 'one model after another')}.", "",
             "| model | score | retention | all dev metrics | params | size MB | latency ms | speedup | FLOPs ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in summary["models"].items():
        every = ", ".join(f"{k} {v:.4f}" for k, v in m["metrics"].items())
        lines.append(f"| {name} | {m['score']:.4f} | {m['retention']:.1%} | {every} | {m['params'] / 1e6:.1f}M | "
                     f"{m['size_mb']:.1f} | {m['latency_ms'][ref]:.2f} | {m['speedup']:.2f}x | {m['flops_ratio']:.3f} |")
    keys = list(next(iter(summary["models"].values()))["latency_ms"])
    lines += ["", f"Latency detail (ms; batch x tokens, p50/p95) and throughput (examples/s), {summary['threads']} threads:", "",
              "| model | params w/o embeddings | " + " | ".join(keys) + " | throughput bs32 |",
              "|---|---|" + "---|" * len(keys) + "---|"]
    for name, m in summary["models"].items():
        tp = ", ".join(f"{k.split('_')[1]} {v:.0f}" for k, v in m["throughput"].items() if k.startswith("bs32"))
        lines.append(f"| {name} | {m['params_no_embeddings'] / 1e6:.1f}M | "
                     + " | ".join(f"{m['latency_ms'][k]:.2f}" for k in keys) + f" | {tp} |")
    lines += controls_md(summary)
    published = [row for row in PUBLISHED if task in row[1]]  # the papers report GLUE tasks only
    if published:
        lines += ["", "Published reference rows (not measured here):", "", "| model | score | params | speedup |",
                  "|---|---|---|---|"]
    for name, scores, params, speed in published:
        lines.append(f"| {name} | {scores[task]} | {params} | {speed} |")
    lines += ["", "ONNX Runtime fp32 and int8 variants, their parity checks and interleaved timings, the score-vs-latency plot "
              "of every variant, and which variant each registered student serves: [deploy.md](deploy.md) (export stage)."]
    lines += data_md(stats) if stats and "train" in stats else []
    lines += augment_md(augment) if augment else []
    lines += ["", "## Plots", ""]
    lines += [f"![{png.stem}]({png.relative_to(rep)})" for png in pngs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    cli(main)
