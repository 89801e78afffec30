"""Step 4, general distillation on the corpus: `python -m tasks.general_distill tinybert|distilbert`.

- tinybert: a fresh student (any shape) learns the pre-trained teacher's embeddings, hidden states and attention
  scores (L_emb + L_hidn + L_attn).
- distilbert: the teacher's every-other layers, trained with L_mlm + L_ce (soft MLM targets) + L_cos. The offline
  teacher has no MLM head, so one is first fitted on its frozen encoder (saved in outputs/general/distilbert/teacher_mlm).
"""

import sys

import mlflow
import torch
from datasets import load_from_disk
from safetensors.torch import save_file
from transformers import AutoModel, BertForMaskedLM, BertModel

from kdistill.io import atomic_dir, write_json_atomic
from kdistill.evaluation import optim_to_trainer_config
from kdistill.models import distilbert_student, every_other_layer, load_tokenizer, resolve_teacher, save_model_atomic, tinybert_config
from kdistill.objectives import DistilBertGeneral, Intermediate, MlmHeadFit, masked_token_accuracy
from kdistill.trainer import Trainer, TrainerConfig, pad_collate

from .common import LossLog, cli, precision_for, setup, stage_run, write_loss_csv


def _special(tok):
    return (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id), tok.mask_token_id


def teacher_with_mlm_head(p, paths, tok, corpus):
    """The teacher as a BertForMaskedLM: its own head if it has one, else a head fitted on the frozen encoder."""
    src = resolve_teacher(p.base.teacher)
    teacher = BertForMaskedLM.from_pretrained(src)
    special, mask_id = _special(tok)
    h = p.general_distill.distilbert.mlm_head
    held = corpus.select(range(len(corpus) - h.heldout_sequences, len(corpus)))
    info = {"source": p.base.teacher}
    has_head = any(k.startswith("cls.") for k in _checkpoint_keys(src))
    if has_head:
        info["head"] = "pre-trained"
    else:
        fit = MlmHeadFit(teacher, special_ids=special, mask_token_id=mask_id)
        cfg = TrainerConfig(lr=h.lr, batch_size=h.batch_size, max_steps=h.steps, warmup_ratio=0.1, seed=p.base.seed,
                            precision=precision_for(p, h.precision), desc="fit MLM head", checkpoint_every=100)
        log = LossLog(prefix="head_")
        head_res = Trainer(fit, corpus.select(range(len(corpus) - h.heldout_sequences)), cfg, paths.work / "mlm_head",
                callbacks=[log], fingerprint={"stage": "mlm_head"}).train()
        log.flush()
        write_loss_csv(paths.reports_for("mlm_head"), head_res.history)
        info["head"] = "fitted on the frozen encoder"
    acc = masked_token_accuracy(teacher, held, pad_collate, special_ids=special, mask_token_id=mask_id)
    info["heldout_masked_token_accuracy"] = acc
    mlflow.log_metric("teacher_mlm/heldout_masked_token_accuracy", acc)
    print(f"[general_distill] teacher MLM head ({info['head']}): held-out masked-token accuracy {acc:.3f}")
    return teacher, info


def _checkpoint_keys(path):
    from pathlib import Path

    from safetensors import safe_open

    f = Path(path) / "model.safetensors"
    if not f.is_file():
        return []  # a hub id: trust from_pretrained's own report
    with safe_open(str(f), "pt") as fh:
        return list(fh.keys())


def main(recipe: str) -> None:
    if recipe not in ("tinybert", "distilbert"):
        raise SystemExit(f"usage: python -m tasks.general_distill tinybert|distilbert (got {recipe!r})")
    p, paths = setup(f"general_distill@{recipe}")
    tok = load_tokenizer(p.base.teacher)
    corpus = load_from_disk(str(paths.data / "corpus"))
    corpus = corpus.remove_columns([c for c in corpus.column_names if c != "input_ids"])
    out = paths.general(recipe)
    with stage_run(p, f"general_distill@{recipe}"):
        log = LossLog()
        if recipe == "tinybert":
            g = p.general_distill.tinybert
            teacher = AutoModel.from_pretrained(resolve_teacher(p.base.teacher))
            torch.manual_seed(p.base.seed)
            s = g.student
            student = BertModel(tinybert_config(teacher.config, s.layers, s.hidden, s.heads, s.ffn), add_pooling_layer=True)
            obj = Intermediate(student, teacher, g.weights, g.layer_map, g.attention, g.shared_projection, g.mask_padding)
            optim = g.optim
        else:
            g = p.general_distill.distilbert
            teacher, head_info = teacher_with_mlm_head(p, paths, tok, corpus)
            layers = every_other_layer(teacher.config.num_hidden_layers) if g.init_layers == "every_other" else g.init_layers
            student = distilbert_student(teacher, layers)
            special, mask_id = _special(tok)
            obj = DistilBertGeneral(student, teacher, g.weights, g.temperature, g.mlm_probability, special, mask_id)
            optim = g.optim
        mlflow.log_param("layer_map" if recipe == "tinybert" else "init_layers",
                         str(getattr(obj, "layer_map", None) or layers))
        cfg = optim_to_trainer_config(optim, p.base.seed, f"general distill ({recipe})", precision_for(p, optim.precision))
        res = Trainer(obj, corpus, cfg, paths.work / f"general_{recipe}", callbacks=[log],
                      fingerprint={"stage": "general", "recipe": recipe}).train()
        log.flush()
        write_loss_csv(paths.reports_for(f"general_distill_{recipe}"), res.history)
        with atomic_dir(out) as tmp:
            student.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            if recipe == "distilbert":
                save_model_atomic(teacher, tok, tmp / "teacher_mlm", extra=head_info)
            if recipe == "tinybert":
                save_file({k: v.contiguous() for k, v in obj.projections.state_dict().items()}, str(tmp / "projections.safetensors"))
            write_json_atomic(tmp / "kdistill.json", {"recipe": recipe, "stage": "general", "steps": res.steps,
                                                      "teacher": p.base.teacher,
                                                      "layer_map": getattr(obj, "layer_map", None)})
    print(f"[general_distill] {recipe}: {res.steps} steps -> {out}")


if __name__ == "__main__":
    cli(main, sys.argv[1] if len(sys.argv) > 1 else "")
