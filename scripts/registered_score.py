"""The registered students of a pipeline, loaded through `mlflow.pyfunc` as a user would and scored on its dev split,
beside the score the export stage measured for that version (its metric tag, set when it was registered; an older
champion that a later, worse run did not replace keeps its own run's score).

    .venv/bin/python scripts/registered_score.py --profile ner          # every recipe's @champion
    .venv/bin/python scripts/registered_score.py --profile squad --recipes tinybert --rows 200

What goes in is what a user sends: the text (NER: the dev words joined by spaces; the served model splits text into
words by its own rule, so a word like "@user" may become two), the question and context (QA), the text or pair
(classification). NER's predicted entities are mapped back onto the dev words by their character offsets and scored
by seqeval, as evaluate does; QA's answers by SQuAD's F1; classification by accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def word_tags(words: list[str], entities: list[dict]) -> list[str]:
    """IOB2 tags of `words` (joined by single spaces) from entities with character offsets into that text: a word
    inside an entity's span is tagged with its label, B- on the entity's first word."""
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    tags = ["O"] * len(words)
    for e in entities:
        inside = [i for i, (s, w) in enumerate(zip(starts, words)) if s < e["end"] and s + len(w) > e["start"]]
        for k, i in enumerate(inside):
            tags[i] = ("B-" if k == 0 else "I-") + e["label"]
    return tags


def pyfunc_score(model, dev, task) -> float:
    if task.kind == "token_classification":
        from kdistill.data.entities import entity_metrics

        texts = [" ".join(w) for w in dev["words"]]
        got = model.predict(texts)
        pred = [word_tags(w, list(e)) for w, e in zip(dev["words"], got["entities"])]
        gold = [[task.labels[t] for t in tags] for tags in dev["tags"]]
        return entity_metrics(gold, pred)[task.metric]
    if task.kind == "extractive_qa":
        from kdistill.data.answers import squad_metrics

        got = model.predict({"question": list(dev["question"]), "context": list(dev["context"])})
        return squad_metrics(list(got["answer"]), [list(a) for a in dev["answer_texts"]])[task.metric]
    if task.kind == "single_label" and task.metric == "accuracy":
        cols = dev.column_names
        text = next(c for c in ("sentence", "text", "sentence1", "question") if c in cols)
        pair = next((c for c in ("sentence2", "text_pair", "question2") if c in cols), None)
        rows = [{"text": t, "text_pair": q} for t, q in zip(dev[text], dev[pair])] if pair else list(dev[text])
        got = model.predict(rows)
        names = [task.labels[y] if task.labels else str(y) for y in dev["label"]]
        return float((got["label"].astype(str).to_numpy() == [str(n) for n in names]).mean())
    raise SystemExit(f"{task.kind} with metric {task.metric}: not scored by this script")


def main() -> None:
    import mlflow
    from datasets import load_from_disk

    from kdistill.config import load_params
    from kdistill.data.task import load_task
    from kdistill.paths import Paths
    from kdistill.tracking import tracking_uri
    from kdistill.train.precision import cpu_capability
    from pipelines.stage_graph import pipeline_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--recipes", nargs="*", help="default: the profile's base.recipes")
    ap.add_argument("--rows", type=int, default=None, help="the first N dev rows only (default: all)")
    a = ap.parse_args()
    _, params_file, out_root = pipeline_file(a.profile)
    p = load_params(params_file)
    a.recipes = a.recipes or p.base.recipes
    paths = Paths(out_root)
    task = load_task(paths.data)
    dev = load_from_disk(str(paths.data / "dev"))
    if a.rows:
        dev = dev.select(range(min(a.rows, len(dev))))
    deploy = json.loads((paths.reports / "deploy.json").read_text())
    mlflow.set_tracking_uri(tracking_uri(p))
    client = mlflow.MlflowClient()
    print(f"{a.profile}: {len(dev)} dev rows, metric {task.metric}, CPU capability {cpu_capability()}")
    print(f"| model | registered | variant | stated {task.metric} | pyfunc {task.metric} | difference (points) |")
    print("|---|---|---|---|---|---|")
    for r in a.recipes:
        name = f"{p.tracking.registry_prefix}{p.base.task}-{r}"
        version = client.get_model_version_by_alias(name, "champion")
        variant = version.tags.get("variant", "onnx-fp32")
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        got = pyfunc_score(model, dev, task)
        # the score measured for this version when it was registered; a version without the tag: the report's
        stated = float(version.tags.get(task.metric, deploy["models"][r][variant]["metrics"][task.metric]))
        note = "" if a.rows is None else " (stated: all rows)"
        print(f"| {r} | {name} v{version.version} | {variant} | {stated:.4f}{note} | {got:.4f} | "
              f"{100 * (got - stated):+.2f} |", flush=True)


if __name__ == "__main__":
    main()
