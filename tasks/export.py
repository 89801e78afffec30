"""Step 7, export: each student and the teacher to ONNX (fp32) and dynamic int8; parity-checked over the whole dev
set; PyTorch eager, ONNX Runtime fp32 and int8 timed interleaved; the fastest passing variant of each student
registered in MLflow as `<task>-<recipe>`, with `champion` moved only when the dev metric improves (or ties at a lower
latency).

Fails (exit 2, outputs untouched) when an fp32 export's logits differ from PyTorch's by more than
export.parity_atol or any predicted label differs.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch
from datasets import load_from_disk
from transformers import AutoTokenizer

from kdistill.data.task import Task, load_task
from kdistill.deploy.onnx_export import (
    export_onnx,
    file_mb,
    load_for_export,
    parity,
    predict_onnx,
    quantize_int8,
    run_session,
    session,
)
from kdistill.deploy.onnx_fusion import fuse_bert
from kdistill.deploy.speed import interleaved_latency, torch_runner
from kdistill.errors import KdistillError
from kdistill.io import atomic_dir, write_json_atomic, write_text_atomic
from kdistill.train.evaluation import predict
from kdistill.train.precision import resolve_threads

from .common import ROOT, EvalRows, cli, precision_for, runtime, setup, stage_run

VARIANTS = ("onnx-fp32", "onnx-int8")
FILES = {"onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx"}


def exported_models(paths, recipes: list[str]) -> list[tuple[str, Path]]:
    """The teacher (for a fair comparison) and the student of each recipe; baselines are controls, not deployed."""
    return [("teacher", paths.teacher)] + [(r, paths.student(r)) for r in recipes]


def metrics_of(task: Task, logits: np.ndarray, rows) -> dict[str, float]:
    return task.score_rows(torch.from_numpy(np.asarray(logits)), rows)


def export_one(name: str, model_dir: Path, out: Path, dev, p, threads: int, task: Task) -> dict:
    """fp32 + int8 ONNX files, tokenizer and card into `out`; parity and dev metrics of each variant."""
    e = p.export
    model = load_for_export(model_dir)
    t0 = time.perf_counter()
    export_onnx(model, out / FILES["onnx-fp32"], e.opset)
    fused = (fuse_bert(out / FILES["onnx-fp32"], out / FILES["onnx-fp32"], model.config.num_attention_heads,
                       model.config.hidden_size) if e.fuse else {})
    quantize_int8(out / FILES["onnx-fp32"], out / FILES["onnx-int8"], e.int8_per_channel, e.int8_reduce_range)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out / "tokenizer")
    seconds = time.perf_counter() - t0
    # the served model (kdistill/deploy/serving_model.py) runs a token kind's texts one per call (QA: one window per
    # call): dynamic int8 quantization scales each activation tensor by the range of all it holds, padding and the
    # other rows of a batch included, so a variant is scored here as it is served, or its score would not be the
    # registered model's; PyTorch's reference is batched alike (a model's own logits move with the batch shape:
    # 0.06 for a MobileBERT-style NER student, batch 1 against 64); both leave zeros past each row's own length, so
    # parity compares real tokens only
    per_call = 1 if task.is_token_level or task.is_span else 64
    reference = predict(model, dev, batch_size=per_call, precision="fp32").numpy()
    row = {"export_seconds": round(seconds, 1), "fused_kernels": fused, "pytorch-fp32": {"metrics": metrics_of(task, reference, dev)}}
    for v in VARIANTS:
        logits = predict_onnx(session(out / FILES[v], threads), dev, batch_size=per_call)
        par = parity(reference, logits, task.is_regression, task.is_span)
        if v == "onnx-fp32":
            par.check(name, e.parity_atol)
        row[v] = {"file": FILES[v], "size_mb": round(file_mb(out / FILES[v]), 2), "metrics": metrics_of(task, logits, dev),
                  "max_abs_logit_diff": par.max_abs_diff, "labels_differing": par.labels_differing}
    drop = row["pytorch-fp32"]["metrics"][task.metric] - row["onnx-int8"]["metrics"][task.metric]
    row["onnx-int8"]["metric_drop"] = round(drop, 6)
    row["onnx-int8"]["registrable"] = drop <= e.int8_max_drop
    print(f"[export] {name}: fp32 max |diff| {row['onnx-fp32']['max_abs_logit_diff']:.2e} (labels differing "
          f"{row['onnx-fp32']['labels_differing']}), int8 {task.metric} change {0.0 - drop:+.4f} "
          f"({row['onnx-int8']['labels_differing']} labels differ), fused kernels {fused or 'none (export.fuse false)'}, "
          f"{seconds:.0f} s", flush=True)
    return row


def time_variants(names_dirs, onnx_root: Path, p, precision: str, threads: int) -> dict:
    """shape -> '<model>/<variant>' -> {p50, p95, throughput, rounds}, every variant of every model interleaved."""
    e = p.export
    runners = {}
    torch.set_num_threads(threads)
    vocab = None
    for name, model_dir in names_dirs:
        model = load_for_export(model_dir)
        vocab = min(vocab or model.config.vocab_size, model.config.vocab_size)  # token ids every model can read
        runners[f"{name}/pytorch-{precision}"] = torch_runner(model, precision)
        for v in VARIANTS:
            sess = session(onnx_root / name / FILES[v], threads)
            runners[f"{name}/{v}"] = (lambda s: (lambda ids, mask: run_session(s, ids, mask)))(sess)
    out = {}
    for s in e.seq_lens:
        for b in e.batch_sizes:
            t0 = time.perf_counter()
            out[f"bs{b}_seq{s}"] = interleaved_latency(runners, b, s, e.warmup, e.repeats, e.max_seconds_per_shape,
                                                       vocab=vocab)
            rounds = next(iter(out[f"bs{b}_seq{s}"].values()))["rounds"]
            print(f"[export] timed batch {b} x {s} tokens: {len(runners)} variants, {rounds} interleaved rounds, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    return out


def choose_variant(row: dict, timing: dict, name: str, ref: str, int8_min_gain: float) -> str:
    """The fastest ONNX variant at the reference shape that passed: fp32 always (parity); int8 only within
    int8_max_drop and when its p50 is lower than fp32's by at least `int8_min_gain` (a share): int8 gives up some
    accuracy, which a difference inside the timing noise does not pay for."""
    p50 = {v: timing[ref][f"{name}/{v}"]["p50"] for v in VARIANTS}
    if row["onnx-int8"]["registrable"] and p50["onnx-int8"] <= p50["onnx-fp32"] * (1.0 - int8_min_gain):
        return "onnx-int8"
    return "onnx-fp32"


def deploy_card(name: str, registered: str, task: str, metric: str, row: dict, ref: str,
                max_seq_len: int, kind: str, int8_min_gain: float) -> str:
    """The ONNX folder's README. It names no timing and no timing-decided choice: the same weights give the same
    bytes in every run (the registered version's description adds which variant it runs)."""
    lines = [f"# {registered}: ONNX Runtime variants", "",
             f"`models:/{registered}@champion` (MLflow pyfunc) runs the fastest variant at {ref.replace('_', ', ')} "
             f"that passed the export checks (int8 only when its p50 is at least {int8_min_gain:.0%} below fp32's); "
             "the version's `variant` tag and `reports/deploy.md` say which one this run registered.", "",
             # no latencies in the card (it is a file the stage writes, and timings differ from run to run): the
             # registry's version tags and reports/deploy.md carry them
             "| variant | file | MB | dev " + metric + " | max abs logit diff vs PyTorch | labels differing |",
             "|---|---|---|---|---|---|"]
    for v in VARIANTS:
        r = row[v]
        lines.append(f"| {v} | `{r['file']}` | {r['size_mb']:.1f} | {r['metrics'][metric]:.4f} | {r['max_abs_logit_diff']:.2e} | "
                     f"{r['labels_differing']} |")
    lines += ["", "Latency of every variant against PyTorch and the teacher: `reports/deploy.md` (version tag `p50_ms`)."]
    fused = row.get("fused_kernels") or {}
    graph = (f"fused attention ({fused['Attention']} Attention kernels)" if fused.get("Attention") else
             "the plain graph (no attention fusion matched this family's graph)" if fused else "the graph as exported (export.fuse false)")
    lines += ["", f"Graph: {graph}; parity with PyTorch checked over the whole dev split either way."]
    out = {"regression": "score = logits[:, 0]", "multi_label": "probabilities = 1 / (1 + np.exp(-logits))  # per label",
           "token_classification": "tags = logits.argmax(-1)  # per sub-token; a word's tag is its first sub-token's",
           "extractive_qa": "start, end = logits[0, :, 0].argmax(), logits[0, :, 1].argmax()  # tokens; "
                            "the served model keeps end >= start, inside the context"}.get(
        kind, "probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)")
    example = {"token_classification": '["New", "York", "is", "big"], is_split_into_words=True',
               "extractive_qa": '["Who wrote it?"], ["It was written by Ann."]'}.get(kind, '["a good movie"]')
    answer = {"token_classification": "DataFrame: entities, each {text, label, start, end, score} with character offsets",
              "extractive_qa": "DataFrame: answer, start, end (character offsets into the context), score"}.get(
        kind, "DataFrame: label (a name), probability; or labels, or score")
    request = ('{"question": "Who wrote it?", "context": "It was written by Ann."}' if kind == "extractive_qa"
               else '["a good movie", "a dull plot"]')
    lines += ["", "## Load with ONNX Runtime alone", "", "```python", "import numpy as np, onnxruntime as ort",
              "from transformers import AutoTokenizer", 'tok = AutoTokenizer.from_pretrained("tokenizer")',
              f'# or "{FILES["onnx-int8"]}"; SkipLayerNormFusion off: ONNX Runtime\'s CPU kernel for it is slower than Add + LayerNorm',
              f'sess = ort.InferenceSession("{FILES["onnx-fp32"]}", providers=["CPUExecutionProvider"], disabled_optimizers=["SkipLayerNormFusion"])',
              f'enc = tok({example}, truncation=True, max_length={max_seq_len}, padding=True, return_tensors="np")',
              "feed = {i.name: enc.get(i.name, np.zeros_like(enc['input_ids'])).astype(np.int64) for i in sess.get_inputs()}",
              'logits = sess.run(["logits"], feed)[0]', out, "```", "",
              "## From the MLflow registry", "", "```python", "import mlflow",
              f'model = mlflow.pyfunc.load_model("models:/{registered}@champion")',
              f'model.predict({request})  # {answer}', "```", "",
              f"Served over HTTP: `make serve MODEL={registered}` (MLflow's model server, 127.0.0.1).", ""]
    return "\n".join(lines)


def register(p, name: str, out: Path, chosen: str, row: dict, task: Task, card: str) -> tuple[str, bool]:
    """Log the pyfunc (ONNX Runtime, `chosen` variant) and register it; move `champion` only on a better dev metric,
    or an equal one at a lower p50 latency (`row[chosen]["p50_ms"]`, tagged on the version)."""
    reg = f"{p.tracking.registry_prefix}{p.base.task}-{name}"
    with mlflow.start_run(run_name=f"register-{name}", nested=True), warnings.catch_warnings():
        # a run of its own: MLflow logs model_config as params, which differ between the students
        warnings.filterwarnings("ignore", message=".*integer column")  # `label` is an int column by design
        return _register(p, name, reg, out, chosen, row, task, card)


def _register(p, name, reg, out, chosen, row, task, card):
    metric = task.metric
    from mlflow import MlflowClient

    info = mlflow.pyfunc.log_model(
        name=name, python_model=str(ROOT / "kdistill" / "deploy" / "serving_model.py"),
        artifacts={"onnx": str(out / FILES[chosen]), "tokenizer": str(out / "tokenizer")},
        model_config={"variant": chosen, "max_seq_len": p.base.max_seq_len, "threads": p.export.serve_threads,
                      "kind": task.kind, "labels": list(task.labels or []), "pair": task.pair,
                      **({"doc_stride": task.doc_stride, "max_answer_len": task.max_answer_len} if task.is_span else {})},
        # no input example, so no inferred signature: MLflow would cast every input to a string column first, and
        # null or 3 would be classified as the texts "None" and "3"; the model checks its inputs itself
        registered_model_name=reg,
        # seqeval: a token classifier groups its tags into entities as the metric does
        pip_requirements=["onnxruntime", "transformers", "pandas", "numpy"] + (["seqeval"] if task.is_token_level else []),
    )
    mlflow.log_artifacts(str(out), artifact_path=f"{name}-onnx")  # both variants and the tokenizer, beside the model
    client = MlflowClient()
    version = str(info.registered_model_version)
    client.update_model_version(reg, version, description=f"This version runs **{chosen}** (`{FILES[chosen]}`).\n\n{card}")
    client.set_model_version_tag(reg, version, "variant", chosen)
    for k, v in row[chosen]["metrics"].items():
        client.set_model_version_tag(reg, version, k, str(v))
    p50 = row[chosen].get("p50_ms")
    if p50 is not None:
        client.set_model_version_tag(reg, version, "p50_ms", f"{p50:.3f}")
    try:
        champ = client.get_model_version_by_alias(reg, "champion")
        best, best_p50 = float(champ.tags.get(metric, "-inf")), float(champ.tags.get("p50_ms", "inf"))
    except Exception:  # noqa: BLE001 - no champion yet
        best, best_p50 = float("-inf"), float("inf")
    score = row[chosen]["metrics"][metric]
    # a better dev metric wins; an equal one wins only when faster (e.g. the same weights in a better-fused graph)
    if score > best or (score == best and p50 is not None and p50 < best_p50):
        client.set_registered_model_alias(reg, "champion", version)
        return version, True
    return version, False


def plot_tradeoff(summary: dict, deploy: dict, out: Path, ref: str) -> None:
    """Dev score vs latency of every model and runtime variant (eager PyTorch from evaluate, ONNX fp32, int8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    marks = {"pytorch": "o", "onnx-fp32": "s", "onnx-int8": "^"}
    colors = {name: plt.cm.tab10(i) for i, name in enumerate(deploy["models"])}  # colour: model; marker: runtime
    for key, t in deploy["timing"][ref].items():
        name, variant = key.split("/")
        kind = "pytorch" if variant.startswith("pytorch") else variant
        row = deploy["models"][name]
        score = row["pytorch-fp32" if kind == "pytorch" else kind]["metrics"][summary["metric"]]
        ax.scatter(t["p50"], score, marker=marks[kind], s=45, color=colors[name])
    for kind, m in marks.items():
        ax.scatter([], [], marker=m, color="gray", label=kind)
    for name, c in colors.items():
        ax.scatter([], [], marker="o", color=c, label=name)
    ax.set_xscale("log")
    ax.set_xlabel(f"CPU latency, {ref.replace('_', ', ')}, p50 (ms, log scale)")
    ax.set_ylabel(f"dev {summary['metric']}")
    ax.set_title("quality vs speed, every runtime variant")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _kernels(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "none"


def deploy_md(deploy: dict, ref: str) -> str:
    metric, models, timing = deploy["metric"], deploy["models"], deploy["timing"]
    first_eager = next(k for k in timing[ref] if k.startswith("teacher/pytorch"))
    eager = first_eager.split("/")[1]
    lines = [f"# Deployment: ONNX Runtime fp32 and int8 against PyTorch eager ({deploy['task']})", "",
             f"All variants timed interleaved in one run (each round runs every variant once, in a shuffled order), "
             f"{deploy['threads']} intra-op thread(s), CPU capability {deploy['cpu_capability']}; PyTorch eager at "
             f"{eager.removeprefix('pytorch-')}. Parity: ONNX fp32 vs PyTorch fp32 logits over all {deploy['dev_rows']} dev rows "
             f"(threshold {deploy['parity_atol']:.0e}).", "",
             "Fused kernels in the ONNX graphs (export.fuse): " + "; ".join(
                 f"{n}: {_kernels(r.get('fused_kernels', {}))}" for n, r in models.items()) + ".", "",
             f"| model | fp32 max abs diff | labels differing | int8 {metric} change | int8 labels differing | fp32 MB | int8 MB | registered variant |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in models.items():
        lines.append(f"| {name} | {r['onnx-fp32']['max_abs_logit_diff']:.1e} | {r['onnx-fp32']['labels_differing']} | "
                     f"{0.0 - r['onnx-int8']['metric_drop']:+.4f}{'' if r['onnx-int8']['registrable'] else ' (over int8_max_drop)'} | "
                     f"{r['onnx-int8']['labels_differing']} | {r['onnx-fp32']['size_mb']:.1f} | {r['onnx-int8']['size_mb']:.1f} | "
                     f"{r.get('registered_variant', '-')} |")
    lines += ["", "Latency p50 / p95 (ms) and throughput (examples/s); speedup over the teacher in the same runtime:", "",
              "| model | variant | " + " | ".join(timing) + " | speedup vs teacher (same variant) " + ref + " |",
              "|---|---|" + "---|" * len(timing) + "---|"]
    for key in timing[ref]:
        name, variant = key.split("/")
        cells = [f"{timing[s][key]['p50']:.2f} / {timing[s][key]['p95']:.2f} ({timing[s][key]['throughput']:.0f}/s)" for s in timing]
        sp = timing[ref][f"teacher/{variant}"]["p50"] / timing[ref][key]["p50"]
        lines.append(f"| {name} | {variant} | " + " | ".join(cells) + f" | {sp:.2f}x |")
    lines += ["", "Each student against the teacher, at " + ref.replace("_", ", ") + ":", "",
              "| student | FLOPs reduction | fastest variant | speedup same variant | share of FLOPs reduction | fastest vs eager teacher |",
              "|---|---|---|---|---|---|"]
    for name, s in deploy["speedups"].items():
        lines.append(f"| {name} | {s['flops_reduction']:.2f}x | {s['fastest_variant']} | {s['speedup_same_variant']:.2f}x | "
                     f"{s['share_of_flops_reduction']:.0%} | {s['fastest_vs_eager_teacher']:.2f}x |")
    lines += ["", "![score vs latency](score_vs_latency.png)", ""]
    return "\n".join(lines)


def main() -> None:
    p, paths = setup("export")
    e = p.export
    task = load_task(paths.data)
    summary_file = paths.reports / "summary.json"
    if not summary_file.is_file():
        raise KdistillError(f"{summary_file}: missing; the export stage reads the evaluate stage's summary (run it first)")
    summary = json.loads(summary_file.read_text())
    threads = resolve_threads(e.threads)
    precision = precision_for(p, p.evaluate.precision)
    todo = [(n, d) for n, d in exported_models(paths, p.base.recipes) if d.is_dir()]
    dev = EvalRows(load_from_disk(str(paths.data / "dev")), paths.teacher, p.base.max_seq_len, task.doc_stride)
    ref = f"bs{e.batch_sizes[0]}_seq{e.seq_lens[0]}"
    deploy = {"task": p.base.task, "metric": task.metric, "threads": threads, "cpu_capability": runtime().cpu_capability,
              "parity_atol": e.parity_atol, "dev_rows": len(dev.teacher), "reference_shape": ref, "models": {}}
    with stage_run(p, "export"):
        with atomic_dir(paths.root / "onnx") as tmp:
            _export_all(p, todo, tmp, dev, deploy, summary, precision, threads, ref, task)
        _publish(p, paths, deploy, summary, ref, task)
    print(f"[export] wrote {paths.root / 'onnx'}, {paths.reports / 'deploy.md'}", flush=True)


def _export_all(p, todo, tmp: Path, dev, deploy: dict, summary: dict, precision: str, threads: int, ref: str,
                task: Task) -> None:
    """Every model exported and checked, every variant timed, a card per student: all inside the temporary dir."""
    for name, d in todo:
        (tmp / name).mkdir()
        deploy["models"][name] = export_one(name, d, tmp / name, dev.for_model(d), p, threads, task)
    deploy["timing"] = time_variants(todo, tmp, p, precision, threads)
    t = deploy["timing"][ref]
    deploy["speedups"] = {}
    for name, _ in todo[1:]:
        fastest = min((k.split("/")[1] for k in t if k.startswith(f"{name}/")), key=lambda v: t[f"{name}/{v}"]["p50"])
        flops = summary["models"].get(name, {}).get("flops_ratio")
        same = t[f"teacher/{fastest}"]["p50"] / t[f"{name}/{fastest}"]["p50"]
        eager_teacher = min(t[k]["p50"] for k in t if k.startswith("teacher/pytorch"))
        deploy["speedups"][name] = {
            "fastest_variant": fastest, "speedup_same_variant": same,
            "flops_reduction": 1 / flops if flops else float("nan"),
            "share_of_flops_reduction": same * flops if flops else float("nan"),
            "fastest_vs_eager_teacher": eager_teacher / t[f"{name}/{fastest}"]["p50"]}
        mlflow.log_metrics({f"{name}/speedup_{fastest}": same, f"{name}/speedup_vs_eager_teacher":
                            deploy["speedups"][name]["fastest_vs_eager_teacher"]})
    cards = {}
    for name, _ in todo[1:]:
        row = deploy["models"][name]
        row["registered_variant"] = choose_variant(row, deploy["timing"], name, ref, p.export.int8_min_gain)
        row[row["registered_variant"]]["p50_ms"] = deploy["timing"][ref][f"{name}/{row['registered_variant']}"]["p50"]
        reg = f"{p.tracking.registry_prefix}{p.base.task}-{name}"
        cards[name] = deploy_card(name, reg, p.base.task, task.metric, row, ref, p.base.max_seq_len, task.kind,
                                  p.export.int8_min_gain)
        write_text_atomic(tmp / name / "README.md", cards[name])
    deploy["cards"] = cards
    for name, r in deploy["models"].items():
        mlflow.log_metrics({f"{name}/onnx_fp32_max_abs_diff": r["onnx-fp32"]["max_abs_logit_diff"],
                            f"{name}/int8_metric_change": -r["onnx-int8"]["metric_drop"]})


def _publish(p, paths, deploy: dict, summary: dict, ref: str, task: Task) -> None:
    """Reports and plot, then the registry: only once every export passed and the ONNX dir is in place."""
    rep = paths.reports
    cards = deploy.pop("cards")
    write_json_atomic(rep / "deploy.json", deploy)
    plot_tradeoff(summary, deploy, rep / "score_vs_latency.png", ref)
    write_text_atomic(rep / "deploy.md", deploy_md(deploy, ref))
    for f in (rep / "deploy.json", rep / "deploy.md", rep / "score_vs_latency.png"):
        mlflow.log_artifact(str(f))
    if not p.tracking.register_models:
        return
    for name, card in cards.items():
        row = deploy["models"][name]
        v, champ = register(p, name, paths.root / "onnx" / name, row["registered_variant"], row, task, card)
        print(f"[export] registered {p.tracking.registry_prefix}{p.base.task}-{name} v{v} ({row['registered_variant']})"
              f"{' (champion)' if champ else ''}", flush=True)


if __name__ == "__main__":
    cli(main)
