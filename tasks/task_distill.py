"""Step 5, task distillation from the fine-tuned teacher into a general student, on the augmented split.

`python -m tasks.task_distill <recipe>` runs the recipe's task phases (kdistill/recipes/<recipe>.py);
`python -m tasks.task_distill baseline-<recipe>` trains the same general student on the same data without a
teacher (the no-distillation control); `python -m tasks.task_distill init-<recipe>` trains, the same way, the student
the general stage starts from (teacher-initialised, no general distillation: task_distill.teacher_init_controls).
"""

import json
import sys
from pathlib import Path

import torch

import mlflow
from datasets import load_from_disk

from kdistill import recipes
from kdistill.data.batches import tokenize_task
from kdistill.data.splits import data_description
from kdistill.data.task import load_task
from kdistill.distill.objectives import teacher_logits
from kdistill.distill.teacher_cache import features_for
from kdistill.errors import KdistillError
from kdistill.io import atomic_dir
from kdistill.model_card import model_card
from kdistill.models import (
    count_parameters,
    load_model,
    load_tokenizer,
    save_model_atomic,
)
from kdistill.recipes.base import TaskContext
from kdistill.tracking import PhaseLogs, write_loss_csv
from kdistill.train.distributed import world
from kdistill.train.evaluation import score
from kdistill.train.phases import run_phases
from kdistill.train.trainer import pad_collate

from .common import checkpoint_selection, cli, precision_for, runtime, setup, stage_run


STAGES = {"baseline": "baseline@{}", "init": "init_control@{}", None: "task_distill@{}"}  # which model -> stage


def teacher_init_start(p, paths, name: str) -> Path:
    """The student the recipe's general stage starts from (the teacher's weights, init: teacher forced where the
    recipe offers random), saved under work/ for the teacher-initialised control; built again on every run (and
    by every rank), the same each time (seeded), so a resumed run continues from the same start."""
    from kdistill.recipes.baseline import teacher_initialised

    from .general_distill import general_plan

    torch.manual_seed(p.base.seed)
    plan, tok = general_plan(teacher_initialised(p, name), paths, name)
    out = paths.work / f"init_control_{name}" / f"start-rank{world().rank}"  # each torchrun rank its own copy
    with atomic_dir(out) as tmp:
        plan.student.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    torch.manual_seed(p.base.seed)  # the task head then starts from the same weights as the baseline's
    return out


def main(which: str) -> None:
    control, _, name = which.rpartition("-") if which.startswith(("baseline-", "init-")) else (None, "", which)
    baseline = control is not None  # either control: no teacher, the baseline budget
    recipe = recipes.get(name)
    stage = STAGES[control].format(name)
    p, paths = setup(stage)
    if control == "init" and name not in p.task_distill.teacher_init_controls:
        raise KdistillError(f"task_distill.teacher_init_controls does not name {name}: add it (in a profile) to train "
                            "its teacher-initialised control")
    task = load_task(paths.data)
    general = teacher_init_start(p, paths, name) if control == "init" else paths.general(name)
    # a baseline never reads the teacher (its tokenizer is the general student's), so it can run beside teacher_finetune
    tok = load_tokenizer(str(general if baseline else paths.teacher))
    rows = load_from_disk(str(paths.augmented / "train"))
    train = tokenize_task(rows, tok, p.base.max_seq_len, task.doc_stride)
    # a general student with its own tokenizer (general_distill.<recipe>.from, another vocabulary) trains on its own
    # tokens; the teacher's soft labels are computed once on the teacher's tokens of the same rows (cache keyed by them)
    own = None if baseline else load_tokenizer(str(general))
    cross_vocab = own is not None and own.get_vocab() != tok.get_vocab()
    teacher_rows = train
    if cross_vocab:
        print(f"[{stage}] the student tokenizes with its own vocabulary ({len(own)} tokens, the teacher's {len(tok)}): "
              "it learns from the teacher's soft labels on the same rows", flush=True)
        tok, train = own, tokenize_task(rows, own, p.base.max_seq_len, task.doc_stride)
    dev = tokenize_task(load_from_disk(str(paths.data / "dev")), tok, p.base.max_seq_len, task.doc_stride)
    student = load_model(task.model_class, general, **task.model_config())
    teacher = None if baseline else load_model(task.model_class, paths.teacher)
    eval_precision = precision_for(p, p.evaluate.precision)
    # augment took the students' rows from before the validation rows, so no student trains on them
    selection = checkpoint_selection(p, paths.data / "train", tok, eval_precision, task)
    out = {"baseline": paths.baseline, "init": paths.init_control, None: paths.student}[control](name)

    def logits(precision: str):
        return teacher_logits(teacher, teacher_rows, pad_collate, precision=precision,
                              cache_dir=paths.work / "teacher_logits")

    def features(obj, cfg, budget_gb: float):
        return features_for(obj, teacher, train, pad_collate, cfg, paths.work / "teacher_features", budget_gb)

    with stage_run(p, stage):
        ctx = TaskContext(p, student, teacher, general, lambda s: precision_for(p, s), logits, features, cross_vocab)
        phases = (recipes.baseline if baseline else recipe).task(ctx)
        logs = PhaseLogs()
        res = run_phases(phases, train, paths.work / stage.replace("@", "_"), student,
                         callbacks=logs, **selection)
        if not world().main:
            return  # rank 0 scores and saves
        logs.flush()
        write_loss_csv(paths.reports_for(stage.replace("@", "_")), *res.histories)
        metrics = score(student, dev, task, eval_precision)  # once, on the state the validation rows chose
        mlflow.log_metrics({f"dev/{k}": v for k, v in metrics.items()})
        info = {"recipe": name, "baseline": baseline, **({"control": "teacher-init"} if control == "init" else {}),
                "task": p.base.task, "dev": metrics, "teacher": p.base.teacher,
                # where it started: a general student (the default pipeline's when this profile shares them)
                **({} if control == "init" else {"general_student": _project_path(general)}),
                "steps": res.steps, "phases": {k: r.steps for k, r in res.results.items()}, "best_step": res.last.best_step,
                "selection": res.last.selection}
        card = model_card(f"teacher-init-{name}" if control == "init" else which, p.base.task, name, p.base.teacher,
                          f"{data_description(p)} train ({len(train)} rows incl. {p.augment.method} augmentation), "
                          f"corpus {p.prepare.corpus} for general distillation",
                          metrics, count_parameters(student),
                          None if baseline else json.loads((paths.teacher / "metrics.json").read_text()), task.metric,
                          control={"init": "teacher-init"}.get(control, control), runtime=runtime().describe(),
                          registered_name=f"{p.tracking.registry_prefix}{p.base.task}-{name}",
                          token_level=task.is_token_level, span=task.is_span)
        save_model_atomic(student, tok, out, extra=info, files={"README.md": card, "metrics.json": json.dumps(metrics, indent=2)})
    print(f"[{stage}] dev {metrics}")


def _project_path(path: Path) -> str:
    from kdistill.paths import ROOT

    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    cli(main, sys.argv[1] if len(sys.argv) > 1 else "", parallel=True)
