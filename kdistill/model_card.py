"""README.md model cards for distilled students: teacher, recipe, data, metrics, how to load.

No speed: a latency timed inside a training stage would be timed beside whatever else trains, and would make the
stage's outputs differ from run to run; the evaluate and export stages time every model with the machine to
themselves (reports/report.md, reports/deploy.md)."""

from __future__ import annotations

# each control: what it is called, and what its card says of how it was trained
CONTROLS = {"baseline": ("no-distillation baseline", " (trained on the task without a teacher, same initialisation)"),
            "teacher-init": ("teacher-initialised control", " shape, initialised from the teacher's weights as its general "
                             "stage starts, then trained on the task without a teacher (no distillation at all)")}


def model_card(name: str, task: str, recipe: str, teacher: str, data: str, metrics: dict, params: int,
               teacher_metrics: dict | None, metric: str, control: str | None = None,
               runtime: str = "", registered_name: str | None = None, token_level: bool = False,
               span: bool = False) -> str:
    """`control`: None for a distilled student, else which control (a key of CONTROLS: what it started from)."""
    kind, how_trained = CONTROLS[control] if control else (f"{recipe}-style distilled student", "")
    head = ("AutoModelForQuestionAnswering" if span else
            "AutoModelForTokenClassification" if token_level else "AutoModelForSequenceClassification")
    example = '{"question": "Who wrote it?", "context": "It was written by Ann."}' if span else '["a good movie"]'
    retention = ""
    if teacher_metrics and teacher_metrics.get(metric):
        retention = f" ({metrics[metric] / teacher_metrics[metric]:.1%} of the teacher's {teacher_metrics[metric]:.4f})"
    how = (
        f"```python\nfrom transformers import {head}, AutoTokenizer\n"
        f"model = {head}.from_pretrained(\"<this directory>\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"<this directory>\")\n```\n"
        + (f"{'A baseline is a control' if control == 'baseline' else 'This is a control'}: it is neither exported to "
           "ONNX nor registered.\n" if control else
           f"From the MLflow registry (the export stage registers the fastest ONNX Runtime variant that passed its parity "
           f"check): `mlflow.pyfunc.load_model(\"models:/{registered_name or f'{task}-{recipe}'}@champion\")"
           f".predict({example})`. The ONNX files, and how to run each with ONNX Runtime alone, are in the export "
           f"stage's `onnx/{recipe}/README.md`.\n")
    )
    metric_lines = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    return f"""---
library_name: transformers
pipeline_tag: {"question-answering" if span else "token-classification" if token_level else "text-classification"}
tags: [knowledge-distillation, {recipe}, {task}]
---
# {name}: {kind} for {task}

- **Teacher**: `{teacher}` fine-tuned on {task}
- **Recipe**: {recipe}{how_trained}
- **Data**: {data}
- **Parameters**: {params:,}
- **Dev {metric}**: {metrics[metric]:.4f}{retention}
- **CPU speed**: timed against the teacher in `reports/report.md` and, per ONNX variant, `reports/deploy.md`
- **Trained with**: {runtime or 'not recorded'}

| metric | dev |
|---|---|
{metric_lines}

## How to load

{how}
Built by kdistill (reproducible distillation pipeline); full comparison in `reports/report.md`.
"""
