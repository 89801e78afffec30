"""Step 3, teacher fine-tune: the pre-trained teacher trained on the task's train split (not the augmented one)."""

import json

import mlflow
from datasets import load_from_disk
from transformers import AutoModelForSequenceClassification

from kdistill.data import tokenize_task
from kdistill.evaluation import optim_to_trainer_config, score
from kdistill.glue import get_task
from kdistill.models import load_tokenizer, resolve_teacher, save_model_atomic
from kdistill.objectives import Supervised
from kdistill.trainer import Trainer

from .common import LossLog, setup, stage_run


def main() -> None:
    p, paths = setup("teacher_finetune")
    spec = get_task(p.base.task)
    tok = load_tokenizer(p.base.teacher)
    train = tokenize_task(load_from_disk(str(paths.data / "train")), tok, p.base.task, p.base.max_seq_len)
    dev = tokenize_task(load_from_disk(str(paths.data / "dev")), tok, p.base.task, p.base.max_seq_len)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_teacher(p.base.teacher), num_labels=spec.num_labels, attn_implementation="eager"
    )
    with stage_run(p, "teacher_finetune"):
        log = LossLog(paths.reports_for("teacher_finetune"))
        cfg = optim_to_trainer_config(p.teacher_finetune.optim, p.base.seed, "teacher fine-tune")
        res = Trainer(Supervised(model), train, cfg, paths.work / "teacher_finetune",
                      eval_fn=lambda obj: score(obj.student, dev, p.base.task), select_metric=spec.metric,
                      callbacks=[log], fingerprint={"stage": "teacher_finetune", "task": p.base.task}).train()
        log.write_csv()
        metrics = score(model, dev, p.base.task)
        mlflow.log_metrics({f"dev/{k}": v for k, v in metrics.items()})
        save_model_atomic(model, tok, paths.teacher, extra={"role": "teacher", "task": p.base.task, "dev": metrics,
                                                            "steps": res.steps, "best_step": res.best_step},
                          files={"metrics.json": json.dumps(metrics, indent=2)})
    print(f"[teacher_finetune] dev {metrics}")


if __name__ == "__main__":
    main()
