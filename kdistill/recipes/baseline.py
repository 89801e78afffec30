"""The no-teacher control: a recipe's general student trained on the same task data and budget, gold labels only."""

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
