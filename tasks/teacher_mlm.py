"""Step 3b, the teacher with a masked-LM head: `python -m tasks.teacher_mlm`.

The recipes whose objectives need the teacher's MLM predictions (DistilBERT's L_ce, MobileBERT's pre-training
distillation) read it from outputs/teacher_mlm. A teacher that ships its pre-trained head keeps it; one without
(the offline sentence-embedding teacher) gets a head fitted on its frozen encoder, and its held-out masked-token
accuracy is reported either way.
"""

import mlflow
from datasets import load_from_disk
from transformers import AutoModelForMaskedLM

from kdistill.distill.objectives import MlmHeadFit, masked_token_accuracy
from kdistill.models import (
    checkpoint_has_mlm_head,
    load_model,
    load_tokenizer,
    resolve_teacher,
    save_model_atomic,
)
from kdistill.recipes.base import special_ids
from kdistill.tracking import PhaseLogs, write_loss_csv
from kdistill.train.distributed import world
from kdistill.train.phases import Phase, run_phases
from kdistill.train.trainer import TrainerConfig, pad_collate

from .common import cli, precision_for, setup, stage_run


def main() -> None:
    p, paths = setup("teacher_mlm")
    h = p.teacher_mlm
    tok = load_tokenizer(p.base.teacher)
    corpus = load_from_disk(str(paths.data / "corpus"))
    corpus = corpus.remove_columns([c for c in corpus.column_names if c != "input_ids"])
    if len(corpus) <= h.heldout_sequences:
        from kdistill.config import ParamsError

        raise ParamsError(f"params.yaml: key 'teacher_mlm.heldout_sequences': {h.heldout_sequences} leaves no corpus "
                          f"sequence to fit on (the corpus has {len(corpus)}); use fewer")
    src = resolve_teacher(p.base.teacher)
    teacher, loading = load_model(AutoModelForMaskedLM, src, p.base.allow_pickle_weights, output_loading_info=True)
    special, mask_id = special_ids(tok)
    held = corpus.select(range(len(corpus) - h.heldout_sequences, len(corpus)))
    info = {"source": p.base.teacher}
    with stage_run(p, "teacher_mlm"):
        if checkpoint_has_mlm_head(src, teacher, loading["missing_keys"]):
            info["head"] = "pre-trained"
        else:
            fit = MlmHeadFit(teacher, h.mlm_probability, special, mask_id)
            cfg = TrainerConfig(lr=h.lr, batch_size=h.batch_size, max_steps=h.steps, warmup_ratio=0.1, seed=p.base.seed,
                                precision=precision_for(p, h.precision), desc="fit MLM head", checkpoint_every=100)
            logs = PhaseLogs()
            res = run_phases([Phase("head", fit, cfg)], corpus.select(range(len(corpus) - h.heldout_sequences)),
                             paths.work / "teacher_mlm", teacher, callbacks=logs)
            if world().main:
                logs.flush()
                write_loss_csv(paths.reports_for("teacher_mlm"), *res.histories)
            info["head"] = "fitted on the frozen encoder"
        if not world().main:
            return  # rank 0 measures and saves
        acc = masked_token_accuracy(teacher, held, pad_collate, p=h.mlm_probability, special_ids=special, mask_token_id=mask_id)
        info["heldout_masked_token_accuracy"] = acc
        mlflow.log_metric("heldout_masked_token_accuracy", acc)
        save_model_atomic(teacher, tok, paths.teacher_mlm, extra=info)
    print(f"[teacher_mlm] head {info['head']}: held-out masked-token accuracy {acc:.3f} -> {paths.teacher_mlm}")


if __name__ == "__main__":
    cli(main, parallel=True)
