"""The controls: each recipe's student shape trained on the same task data and budget, gold labels only.

- the no-teacher control (`baseline-<recipe>`) starts from the recipe's general student, so it measures what task
  distillation adds;
- the teacher-initialised control (`teacher-init-<recipe>`, task_distill.teacher_init_controls) starts from the
  student the general stage starts from (the same shape, the teacher's weights in the same selection) and skips
  general distillation, so it measures what the whole recipe adds over fine-tuning a cut-down teacher.
"""

from __future__ import annotations

from kdistill.distill.objectives import Supervised
from kdistill.recipes.base import TaskContext, trainer_config
from kdistill.schema import OptimParams
from kdistill.train.phases import Phase

# task_distill.baseline: same-shape students trained without a teacher, on the same rows and budget
TaskParams = OptimParams
TASK_DEFAULTS = OptimParams(lr=1e-4, epochs=2.0)


def task(ctx: TaskContext) -> list[Phase]:
    return [Phase("supervised", Supervised(ctx.student), trainer_config(ctx.p.task_distill.baseline, ctx, "baseline"),
                  evaluate=True)]


def teacher_initialised(p, recipe: str):
    """The params the teacher-initialised control builds its start with: the recipe's general params with a
    teacher-initialised student where the recipe lets one choose (init: random becomes init: teacher). A recipe
    whose student has no teacher counterpart (MobileBERT's bottlenecks) starts as its general stage does."""
    student = getattr(getattr(p.general_distill, recipe), "student", None)
    if student is None or getattr(student, "init", "teacher") == "teacher":
        return p
    q = p.model_copy(deep=True)
    getattr(q.general_distill, recipe).student.init = "teacher"
    return q
