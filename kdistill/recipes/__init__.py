"""Recipes: one module per way of distilling (how the student is built, which objectives each stage trains).

A recipe module holds everything about its way: its params (GeneralParams, TaskParams: kdistill.config puts them at
general_distill.<name> and task_distill.<name>), its checks against the teacher's shape (check_teacher), whether it
needs the teacher's masked-LM head (NEEDS_TEACHER_MLM), how its student is built and what each stage trains
(general(ctx), task(ctx)), whether its task stage compares the models token by token (token_level_task(p):
the reason, or None when a student with its own tokenizer can learn from the teacher's soft labels); optionally what a general student given with `from` must fit (check_start) and the
model type it builds when not the teacher's (STUDENT_MODEL_TYPE). RECIPES is the one list of recipes: the params schema, validation and the stages follow it.

Adding a recipe: its module and an entry in RECIPES, its section in params.yaml, its name in dvc.yaml's `recipes`,
its small budget in profiles/smoke.yaml (tests check each against RECIPES).
"""

from __future__ import annotations

from types import ModuleType

from kdistill.errors import KdistillError
from kdistill.recipes import baseline, distilbert, minilm, mobilebert, tinybert

RECIPES: dict[str, ModuleType] = {"tinybert": tinybert, "distilbert": distilbert, "mobilebert": mobilebert,
                                  "minilm": minilm}


class UnknownRecipe(KdistillError, ValueError):
    pass


def get(name: str) -> ModuleType:
    if name not in RECIPES:
        raise UnknownRecipe(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


__all__ = ["RECIPES", "baseline", "get"]
