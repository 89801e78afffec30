"""Step 5, task distillation from the fine-tuned teacher into the general students, on the augmented split.

`python -m tasks.task_distill tinybert|distilbert|baseline-tinybert|baseline-distilbert`
- tinybert: intermediate layers first (L_emb + L_hidn + L_attn), then the prediction layer (L_pred);
- distilbert: soft labels from the teacher plus hard labels, alpha * L_ce + (1 - alpha) * L_hard;
- baseline-*: the same general student trained on the same data without a teacher (the no-distillation control).
"""

import json
import sys

import mlflow
from datasets import load_from_disk
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from kdistill.data import tokenize_task
from kdistill.evaluation import optim_to_trainer_config, score
from kdistill.glue import get_task, label_names
from kdistill.model_card import model_card
from kdistill.models import count_parameters, load_tokenizer, save_model_atomic
from kdistill.speed import latency_ms
from kdistill.objectives import Intermediate, Prediction, Supervised, teacher_logits
from kdistill.trainer import Trainer, pad_collate

from .common import LossLog, cli, precision_for, runtime, setup, stage_run, write_loss_csv

RECIPES = ("tinybert", "distilbert", "baseline-tinybert", "baseline-distilbert")


def main(which: str) -> None:
    if which not in RECIPES:
        raise SystemExit(f"usage: python -m tasks.task_distill {'|'.join(RECIPES)} (got {which!r})")
    stage = f"task_distill@{which}" if not which.startswith("baseline") else f"baseline@{which.split('-')[1]}"
    p, paths = setup(stage)
    spec = get_task(p.base.task)
    recipe = which.removeprefix("baseline-")
    general = paths.general(recipe)
    baseline = which.startswith("baseline")
    # a baseline never reads the teacher (its tokenizer is the general student's), so it can run beside teacher_finetune
    tok = load_tokenizer(str(general if baseline else paths.teacher))
    train = tokenize_task(load_from_disk(str(paths.augmented / "train")), tok, p.base.task, p.base.max_seq_len)
    dev = tokenize_task(load_from_disk(str(paths.data / "dev")), tok, p.base.task, p.base.max_seq_len)
    student = AutoModelForSequenceClassification.from_pretrained(general, num_labels=spec.num_labels, **label_names(spec))
    eval_precision = precision_for(p, p.evaluate.precision)
    evaluate = lambda obj: score(obj.student, dev, p.base.task, eval_precision)  # noqa: E731
    out = paths.baseline(recipe) if which.startswith("baseline") else paths.student(recipe)
    fp = {"stage": stage, "task": p.base.task}
    with stage_run(p, stage):
        if which.startswith("baseline"):
            log = LossLog()
            csv_name, histories = f"baseline_{recipe}", []
            cfg = optim_to_trainer_config(p.task_distill.baseline, p.base.seed, f"baseline ({recipe})",
                                          precision_for(p, p.task_distill.baseline.precision))
            res = Trainer(Supervised(student), train, cfg, paths.work / f"baseline_{recipe}", eval_fn=evaluate,
                          select_metric=spec.metric, callbacks=[log], fingerprint=fp).train()
            histories.append(res.history)
        else:
            teacher = AutoModelForSequenceClassification.from_pretrained(paths.teacher)
            log = LossLog()
            csv_name, histories = f"task_distill_{recipe}", []
            if recipe == "tinybert":
                t = p.task_distill.tinybert
                g = p.general_distill.tinybert
                inter = Intermediate(student, teacher, {k: v for k, v in t.weights.items() if k != "pred"}, g.layer_map,
                                     g.attention, g.shared_projection, g.mask_padding)
                proj = general / "projections.safetensors"
                if proj.is_file():
                    inter.projections.load_state_dict(load_file(str(proj)))
                cfg = optim_to_trainer_config(t.intermediate, p.base.seed, "task distill (tinybert, intermediate)",
                                              precision_for(p, t.intermediate.precision))
                inter_res = Trainer(inter, train, cfg, paths.work / "task_tinybert_inter", callbacks=[log],
                                    fingerprint={**fp, "phase": "intermediate"}).train()
                histories.append(inter_res.history)
                cache = (teacher_logits(teacher, train, pad_collate, precision=precision_for(p, t.prediction.precision), cache_dir=paths.work / "teacher_logits")
                         if t.cache_teacher_outputs else None)
                obj = Prediction(student, teacher, {"pred": t.weights.get("pred", 1.0)}, t.temperature, "ce",
                                 soft_name="pred", cached_logits=cache)
                cfg = optim_to_trainer_config(t.prediction, p.base.seed, "task distill (tinybert, prediction)",
                                              precision_for(p, t.prediction.precision))
                # prediction-phase steps continue the intermediate phase's step numbers in the loss logs
                log_pred = LossLog(step_offset=inter_res.steps)
                res = Trainer(obj, train, cfg, paths.work / "task_tinybert_pred", eval_fn=evaluate,
                              select_metric=spec.metric, callbacks=[log_pred], fingerprint={**fp, "phase": "prediction"}).train()
                log_pred.flush()
            else:
                d = p.task_distill.distilbert
                cache = (teacher_logits(teacher, train, pad_collate, precision=precision_for(p, d.optim.precision), cache_dir=paths.work / "teacher_logits")
                         if d.cache_teacher_outputs else None)
                obj = Prediction(student, teacher, {"ce": d.alpha_soft, "hard": 1 - d.alpha_soft}, d.temperature,
                                 d.soft_loss, d.t2_scaling, soft_name="ce", cached_logits=cache)
                cfg = optim_to_trainer_config(d.optim, p.base.seed, "task distill (distilbert)", precision_for(p, d.optim.precision))
                res = Trainer(obj, train, cfg, paths.work / "task_distilbert", eval_fn=evaluate,
                              select_metric=spec.metric, callbacks=[log], fingerprint=fp).train()
            histories.append(res.history)
        log.flush()
        write_loss_csv(paths.reports_for(csv_name), *histories)
        metrics = score(student, dev, p.base.task, eval_precision)
        mlflow.log_metrics({f"dev/{k}": v for k, v in metrics.items()})
        info = {"recipe": recipe, "baseline": which.startswith("baseline"), "task": p.base.task, "dev": metrics,
                "teacher": p.base.teacher, "steps": res.steps, "best_step": res.best_step}
        lat = latency_ms(student, 1, p.base.max_seq_len, warmup=3, repeats=20, precision=eval_precision)
        card = model_card(out.name if not which.startswith("baseline") else which, p.base.task, recipe, p.base.teacher,
                          f"GLUE {p.base.task} train ({len(train)} rows incl. {p.augment.method} augmentation), "
                          f"corpus {p.prepare.corpus} for general distillation",
                          metrics, count_parameters(student), {f"bs1_seq{p.base.max_seq_len}": lat["p50"]},
                          None if baseline else json.loads((paths.teacher / "metrics.json").read_text()), spec.metric,
                          baseline=which.startswith("baseline"), runtime=runtime().describe(),
                          registered_name=f"{p.tracking.registry_prefix}{p.base.task}-{recipe}")
        save_model_atomic(student, tok, out, extra=info, files={"README.md": card, "metrics.json": json.dumps(metrics, indent=2)})
    print(f"[{stage}] dev {metrics}")


if __name__ == "__main__":
    cli(main, sys.argv[1] if len(sys.argv) > 1 else "")
