"""The no-teacher control: a recipe's general student trained on the same task data and budget, gold labels only."""

from __future__ import annotations

from kdistill.distill.objectives import Supervised
from kdistill.recipes.base import TaskContext, trainer_config
from kdistill.train.phases import Phase


def task(ctx: TaskContext) -> list[Phase]:
    return [Phase("supervised", Supervised(ctx.student), trainer_config(ctx.p.task_distill.baseline, ctx, "baseline"),
                  evaluate=True)]
