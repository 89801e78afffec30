"""The building blocks of the params schema that recipes share with the rest of the configuration: a section
that refuses unknown keys, optimiser settings, a student's shape, a layer map. kdistill.config assembles the whole
params file from these, the stage sections and each recipe's own sections."""

from __future__ import annotations

import contextlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kdistill.errors import KdistillError
from kdistill.train.precision import PrecisionSpec


class ParamsError(KdistillError, ValueError):
    """A params.yaml problem, with the file and the key's full path in the message."""


class Section(BaseModel):
    # extra="forbid": an unknown key is an error (with the nearest valid key), never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GeneralSection(Section):
    """What every general_distill.<recipe> section has besides its own keys: `from`, a general student already
    distilled (a local directory or a hub id) that the task stage starts from instead, skipping general
    distillation; its shape is read from it (the section's student shape is then not used) and checked against
    the teacher before any work (kdistill.general_start)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)
    from_: str | None = Field(None, alias="from")


class StudentShape(Section):
    layers: int = Field(3, ge=1, le=48)
    hidden: int = Field(192, ge=8)
    heads: int = Field(12, ge=1)
    ffn: int = Field(768, ge=8)
    # the FFN activation; teacher: the teacher's own. A fresh student is free to differ: ReLU is one cheap max per
    # element where GELU's erf is several instructions, which counts at batch 1 in a narrow student (MobileBERT's choice)
    activation: Literal["teacher", "gelu", "relu"] = "teacher"
    # teacher: layers by the layer map, evenly spaced hidden units, heads and FFN units of the teacher's weights
    # (kdistill.student_init); random: a fresh student
    init: Literal["teacher", "random"] = "teacher"

    @model_validator(mode="after")
    def _teacher_init_keeps_activation(self):
        if self.init == "teacher" and self.activation != "teacher":
            raise ValueError(f"a teacher-initialised student keeps the teacher's FFN activation: set activation: "
                             f"teacher, or init: random for {self.activation}")
        return self

    @model_validator(mode="after")
    def _heads_divide_hidden(self):
        if self.hidden % self.heads:
            raise ValueError(
                f"heads ({self.heads}) must divide hidden ({self.hidden}); "
                f"valid head counts for hidden={self.hidden}: {divisors(self.hidden)}"
            )
        return self


def divisors(n: int) -> list[int]:
    return [d for d in range(1, min(n, 64) + 1) if n % d == 0]


LayerMapSpec = Literal["uniform", "top", "bottom"] | list[int]


class OptimParams(Section):
    lr: float = Field(5e-5, gt=0, lt=1)
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs when set
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    precision: PrecisionSpec | None = None  # None: base.precision
    eval_every: int | None = Field(None, ge=1)  # optimizer steps between dev evaluations (None: once per epoch)
    checkpoint_every: int = Field(200, ge=1)


@contextlib.contextmanager
def params_key(key: str):
    """A check against the teacher that fails inside this block is reported as a problem of params key `key`."""
    try:
        yield
    except (KdistillError, ValueError) as exc:
        if isinstance(exc, ParamsError):
            raise
        raise ParamsError(f"params.yaml: key '{key}': {exc}") from None
