"""Recipes: one module per way of distilling (how the student is built, which objectives each stage trains).

Adding a recipe: a module here with NEEDS_TEACHER_MLM, general(ctx) and task(ctx), an entry in RECIPES, a
`general_distill.<name>` / `task_distill.<name>` params section, and its name in dvc.yaml's `recipes` list.
"""

from __future__ import annotations

from types import ModuleType

from kdistill.errors import KdistillError
from kdistill.recipes import baseline, distilbert, mobilebert, tinybert

RECIPES: dict[str, ModuleType] = {"tinybert": tinybert, "distilbert": distilbert, "mobilebert": mobilebert}


class UnknownRecipe(KdistillError, ValueError):
    pass


def get(name: str) -> ModuleType:
    if name not in RECIPES:
        raise UnknownRecipe(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


__all__ = ["RECIPES", "baseline", "get"]
