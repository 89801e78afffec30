"""Step 3, teacher fine-tune: the pre-trained teacher trained on the task's train split (not the augmented one)."""

import json

import mlflow
from datasets import load_from_disk
from transformers import AutoModelForSequenceClassification

from kdistill.data.batches import tokenize_task
from kdistill.data.glue import get_task, label_names
from kdistill.data.splits import first
from kdistill.distill.objectives import Supervised
from kdistill.models import (
    load_model,
    load_tokenizer,
    resolve_teacher,
    save_model_atomic,
)
from kdistill.tracking import LossLog, write_loss_csv
from kdistill.train.distributed import world
from kdistill.train.evaluation import optim_to_trainer_config, score
from kdistill.train.trainer import Trainer

from .common import checkpoint_selection, cli, precision_for, setup, stage_run


def main() -> None:
    p, paths = setup("teacher_finetune")
    spec = get_task(p.base.task)
    tok = load_tokenizer(p.base.teacher)
    n, held = p.teacher_finetune.max_train_examples, p.base.validation_rows
    train = first(load_from_disk(str(paths.data / "train")), n, held, str(paths.data / "train"))
    train = tokenize_task(train, tok, p.base.task, p.base.max_seq_len)
    dev = tokenize_task(load_from_disk(str(paths.data / "dev")), tok, p.base.task, p.base.max_seq_len)
    model = load_model(
        AutoModelForSequenceClassification, resolve_teacher(p.base.teacher), p.base.allow_pickle_weights, num_labels=spec.num_labels, **label_names(spec)
    )
    eval_precision = precision_for(p, p.evaluate.precision)
    eval_fn, select_metric = checkpoint_selection(p, paths.data / "train", tok, eval_precision)
    with stage_run(p, "teacher_finetune"):
        log = LossLog()
        cfg = optim_to_trainer_config(p.teacher_finetune.optim, p.base.seed, "teacher fine-tune",
                                      precision_for(p, p.teacher_finetune.optim.precision))
        res = Trainer(Supervised(model), train, cfg, paths.work / "teacher_finetune",
                      eval_fn=eval_fn, select_metric=select_metric,
                      callbacks=[log], fingerprint={"stage": "teacher_finetune", "task": p.base.task}).train()
        if not world().main:
            return  # rank 0 scores and saves
        log.flush()
        write_loss_csv(paths.reports_for("teacher_finetune"), res.history)
        metrics = score(model, dev, p.base.task, eval_precision)  # once, on the state the validation rows chose
        mlflow.log_metrics({f"dev/{k}": v for k, v in metrics.items()})
        save_model_atomic(model, tok, paths.teacher, extra={"role": "teacher", "task": p.base.task, "dev": metrics,
                                                            "steps": res.steps, "best_step": res.best_step},
                          files={"metrics.json": json.dumps(metrics, indent=2)})
    print(f"[teacher_finetune] dev {metrics}")


if __name__ == "__main__":
    cli(main, parallel=True)
