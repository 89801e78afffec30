"""Step 4, general distillation on the corpus: `python -m tasks.general_distill <recipe>`.

The recipe (kdistill/recipes/<recipe>.py) builds the student and its phases; this step runs them, logs every loss
component, and saves the general student atomically to outputs/general/<recipe>.
"""

import sys

import mlflow
from datasets import load_from_disk

from kdistill import recipes
from kdistill.general_start import load_start
from kdistill.io import atomic_dir, write_json_atomic
from kdistill.models import load_tokenizer, resolve_teacher
from kdistill.recipes.base import GeneralContext
from kdistill.tracking import PhaseLogs, write_loss_csv
from kdistill.train.distributed import world
from kdistill.train.phases import run_phases

from .common import cli, precision_for, setup, stage_run


def main(name: str) -> None:
    recipe = recipes.get(name)
    p, paths = setup(f"general_distill@{name}")
    start = getattr(p.general_distill, name).from_
    if start is not None:
        return save_start(p, paths, name, start, load_tokenizer(p.base.teacher))
    if recipe.NEEDS_TEACHER_MLM and not (paths.teacher_mlm / "config.json").is_file():
        from kdistill.errors import KdistillError

        raise KdistillError(f"{paths.teacher_mlm}: the teacher with an MLM head is missing; run stage teacher_mlm first")
    corpus = load_from_disk(str(paths.data / "corpus"))
    corpus = corpus.remove_columns([c for c in corpus.column_names if c != "input_ids"])
    out = paths.general(name)
    with stage_run(p, f"general_distill@{name}"):
        plan, tok = general_plan(p, paths, name)
        if world().main:
            mlflow.log_params({k: str(v) for k, v in plan.info.items()})
        logs = PhaseLogs()
        res = run_phases(plan.phases, corpus, paths.work / f"general_{name}", plan.student, callbacks=logs)
        if not world().main:
            return  # rank 0 saves
        logs.flush()
        write_loss_csv(paths.reports_for(f"general_distill_{name}"), *res.histories)
        with atomic_dir(out) as tmp:
            plan.student.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            if plan.save_extra:
                plan.save_extra(tmp)
            write_json_atomic(tmp / "kdistill.json", {"recipe": name, "stage": "general", "steps": res.steps,
                                                      "phases": {k: r.steps for k, r in res.results.items()},
                                                      "teacher": p.base.teacher, **plan.info})
    print(f"[general_distill] {name}: {res.steps} steps -> {out}")


def general_plan(p, paths, name: str):
    """(the recipe's general plan: its student as built from the teacher, before any step; the teacher's
    tokenizer). The teacher-initialised control (tasks/task_distill.py) starts from the same student."""
    tok = load_tokenizer(p.base.teacher)
    ctx = GeneralContext(p, resolve_teacher(p.base.teacher), paths.teacher_mlm, tok, lambda s: precision_for(p, s))
    return recipes.get(name).general(ctx), tok


def save_start(p, paths, name: str, src: str, tok) -> None:
    """general_distill.<name>.from: the given general student (checked against the teacher in validation) is this
    stage's output, with the teacher's tokenizer, or its own when it tokenizes differently (cross-vocabulary); no
    step is trained (an empty loss curve is kept on record)."""
    out = paths.general(name)
    with stage_run(p, f"general_distill@{name}"):
        if not world().main:
            return
        student, own = load_start(src, tok.get_vocab(), p.base.allow_pickle_weights)
        c = student.config
        info = {"from": src, "layers": c.num_hidden_layers, "hidden": c.hidden_size, "heads": c.num_attention_heads}
        if own is not None:  # another vocabulary: the student keeps its tokenizer and learns from soft labels
            tok = own
            info["own_tokenizer"] = f"{len(own)} tokens ({c.model_type})"
        mlflow.log_params({k: str(v) for k, v in info.items()})
        write_loss_csv(paths.reports_for(f"general_distill_{name}"))
        with atomic_dir(out) as tmp:
            student.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            write_json_atomic(tmp / "kdistill.json", {"recipe": name, "stage": "general", "steps": 0,
                                                      "teacher": p.base.teacher, **info})
    print(f"[general_distill] {name}: started from {src} (no general distillation) -> {out}")


if __name__ == "__main__":
    cli(main, sys.argv[1] if len(sys.argv) > 1 else "", parallel=True)
