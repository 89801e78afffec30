"""Step 4, general distillation on the corpus: `python -m tasks.general_distill <recipe>`.

The recipe (kdistill/recipes/<recipe>.py) builds the student and its phases; this step runs them, logs every loss
component, and saves the general student atomically to outputs/general/<recipe>.
"""

import sys

import mlflow
from datasets import load_from_disk

from kdistill import recipes
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
    if recipe.NEEDS_TEACHER_MLM and not (paths.teacher_mlm / "config.json").is_file():
        from kdistill.errors import KdistillError

        raise KdistillError(f"{paths.teacher_mlm}: the teacher with an MLM head is missing; run stage teacher_mlm first")
    tok = load_tokenizer(p.base.teacher)
    corpus = load_from_disk(str(paths.data / "corpus"))
    corpus = corpus.remove_columns([c for c in corpus.column_names if c != "input_ids"])
    out = paths.general(name)
    with stage_run(p, f"general_distill@{name}"):
        ctx = GeneralContext(p, resolve_teacher(p.base.teacher), paths.teacher_mlm, tok, lambda s: precision_for(p, s))
        plan = recipe.general(ctx)
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


if __name__ == "__main__":
    cli(main, sys.argv[1] if len(sys.argv) > 1 else "", parallel=True)
