"""Step 3, teacher fine-tune: the pre-trained teacher trained on the task's train split (not the augmented one), or a
teacher already fine-tuned for these labels scored and kept as it is (teacher_finetune.mode, kdistill/teacher_head.py)."""

import json

import mlflow
from datasets import load_from_disk
from transformers import AutoConfig

from kdistill.data.batches import tokenize_task
from kdistill.data.splits import first, validation_rows
from kdistill.data.task import load_task
from kdistill.distill.objectives import Supervised
from kdistill.models import (
    load_model,
    load_tokenizer,
    resolve_teacher,
    save_model_atomic,
)
from kdistill.teacher_head import TeacherHeadError, near_chance, plan
from kdistill.tracking import LossLog, write_loss_csv
from kdistill.train.distributed import world
from kdistill.train.evaluation import optim_to_trainer_config, score
from kdistill.train.trainer import Trainer

from .common import checkpoint_selection, cli, precision_for, setup, stage_run


def main() -> None:
    p, paths = setup("teacher_finetune")
    task = load_task(paths.data)
    src = resolve_teacher(p.base.teacher)
    how = plan(AutoConfig.from_pretrained(src), task, p.teacher_finetune.mode, p.base.teacher)
    tok = load_tokenizer(p.base.teacher)
    dev = tokenize_task(load_from_disk(str(paths.data / "dev")), tok, p.base.max_seq_len, task.doc_stride)
    eval_precision = precision_for(p, p.evaluate.precision)
    if how == "use":
        return use_as_is(p, paths, task, src, tok, dev, eval_precision)
    n, held = p.teacher_finetune.max_train_examples, p.base.validation_rows
    train = first(load_from_disk(str(paths.data / "train")), n, held, str(paths.data / "train"))
    train = tokenize_task(train, tok, p.base.max_seq_len, task.doc_stride)
    # a head of another size (a teacher fine-tuned for other labels, mode: train) is replaced by a fresh one
    model = load_model(task.model_class, src, p.base.allow_pickle_weights,
                       ignore_mismatched_sizes=True, **task.model_config())
    selection = checkpoint_selection(p, paths.data / "train", tok, eval_precision, task)
    with stage_run(p, "teacher_finetune"):
        log = LossLog()
        cfg = optim_to_trainer_config(p.teacher_finetune.optim, p.base.seed, "teacher fine-tune",
                                      precision_for(p, p.teacher_finetune.optim.precision))
        res = Trainer(Supervised(model), train, cfg, paths.work / "teacher_finetune",
                      **selection,
                      callbacks=[log], fingerprint={"stage": "teacher_finetune", "task": p.base.task}).train()
        if not world().main:
            return  # rank 0 scores and saves
        log.flush()
        write_loss_csv(paths.reports_for("teacher_finetune"), res.history)
        metrics = score(model, dev, task, eval_precision)  # once, on the state the validation rows chose
        mlflow.log_metrics({f"dev/{k}": v for k, v in metrics.items()})
        save_model_atomic(model, tok, paths.teacher, extra={"role": "teacher", "task": p.base.task, "dev": metrics,
                                                            "mode": "train", "steps": res.steps, "best_step": res.best_step,
                                                            "selection": res.selection},
                          files={"metrics.json": json.dumps(metrics, indent=2)})
    print(f"[teacher_finetune] dev {metrics}")


def use_as_is(p, paths, task, src, tok, dev, eval_precision) -> None:
    """A teacher already fine-tuned for these labels: scored, checked against chance, saved unchanged (0 steps)."""
    if not world().main:
        return
    model = load_model(task.model_class, src, p.base.allow_pickle_weights)
    if not task.is_token_level and not task.is_span:
        model.config.problem_type = task.model_config()["problem_type"]  # the loss the students' soft targets assume
    val = validation_rows(load_from_disk(str(paths.data / "train")), p.base.validation_rows)
    rows, where = (tokenize_task(val, tok, p.base.max_seq_len, task.doc_stride), "validation rows") if val is not None else (dev, "dev")
    checked = score(model, rows, task, eval_precision)[task.metric]
    low, chance = near_chance(task, checked, task.gold(rows))
    if low:
        raise TeacherHeadError(f"{p.base.teacher}: {task.metric} {checked:.4f} on {len(rows)} {where}, near chance "
                               f"({chance:.4f}): it looks pre-trained, not fine-tuned: set teacher_finetune.mode: train")
    with stage_run(p, "teacher_finetune"):
        write_loss_csv(paths.reports_for("teacher_finetune"), [])
        metrics = score(model, dev, task, eval_precision)
        mlflow.log_metrics({f"dev/{k}": v for k, v in metrics.items()})
        mlflow.log_metric(f"validation/{task.metric}", checked)
        save_model_atomic(model, tok, paths.teacher, extra={"role": "teacher", "task": p.base.task, "dev": metrics,
                                                            "mode": "use", "steps": 0, "best_step": None},
                          files={"metrics.json": json.dumps(metrics, indent=2)})
    print(f"[teacher_finetune] {p.base.teacher} already names the labels {list(task.labels or [])}: used as it is "
          f"(0 training steps; {task.metric} {checked:.4f} on the {where}); dev {metrics}")


if __name__ == "__main__":
    cli(main, parallel=True)
