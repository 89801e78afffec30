"""One trainer for every objective: resumable, exact after SIGKILL, with per-component loss callbacks.

An objective is an nn.Module whose forward(batch) returns a dict of unweighted scalar loss components and whose
`weights` dict says how they add up. The trainer owns everything else: batching (dynamic padding, length grouping),
AdamW with linear warm-up, accumulation, clipping, autocast, periodic evaluation with best-state selection, and
checkpoints that hold model, optimizer, scheduler, RNG states and data position.

Under torchrun the same loop is data-parallel (kdistill.train.distributed): each rank computes its share of every global
batch, losses are weighted by that share and gradients summed across ranks, so N processes take the steps one
process would; rank 0 alone evaluates, logs and writes checkpoints (holding every rank's RNG state).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kdistill.data.batches import epoch_batches, pad_collate, row_lengths  # noqa: F401 (pad_collate: callers' default)
from kdistill.errors import KdistillError
from kdistill.fingerprint import dataset_digest, module_digest
from kdistill.io import atomic_dir
from kdistill.train import distributed
from kdistill.train.dropout import install_fast_dropout
from kdistill.train.precision import autocast, grad_scaler
from kdistill.train.selection import choose


class NonFiniteLossError(KdistillError, FloatingPointError):
    pass


@dataclass
class TrainerConfig:
    lr: float = 5e-5
    batch_size: int = 32
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    precision: str = "fp32"  # resolved: fp32 | bf16 | fp16 (kdistill.train.precision.resolve_precision)
    eval_every: int | None = None  # None: evaluate at each epoch end (when an eval_fn is given)
    checkpoint_every: int = 200
    seed: int = 42
    length_grouping: bool = True
    desc: str = "train"


class Callback(Protocol):
    def on_step(self, step: int, components: dict[str, float], total: float, lr: float) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    steps: int
    best_metric: float | None
    best_step: int | None
    evals: list[dict] = field(default_factory=list)
    resumed_from: int | None = None
    history: list[dict] = field(default_factory=list)  # per step: step, loss, lr and every component
    selection: dict | None = None  # how the kept state was chosen (kdistill.train.selection.choose)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def clip_gradients(params: list, max_norm: float) -> None:
    """clip_grad_norm_, except that on CPU the rescale (a pass over every gradient, the embedding matrix's
    included) is skipped when the norm is already within `max_norm`, where its factor would be 1."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or grads[0].device.type != "cpu":  # on an accelerator, reading the norm back would stall the queue
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    # sum of per-tensor dot products: BLAS reads each gradient once, at twice the speed of vector_norm here
    norm = torch.stack([torch.dot(g.reshape(-1), g.reshape(-1)) for g in grads]).sum().sqrt()
    if not torch.isfinite(norm) or norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Trainer:
    def __init__(
        self,
        objective: nn.Module,
        train_dataset,
        config: TrainerConfig,
        checkpoint_dir: str | Path,
        collate: Callable[[list[dict]], dict] = pad_collate,
        eval_fn: Callable[[nn.Module], dict[str, float] | tuple[dict[str, float], object]] | None = None,
        select_metric: str | None = None,
        callbacks: list[Callback] = (),
        select_rule: str = "best",
        compare: Callable | None = None,
        fingerprint: dict | None = None,
        device: torch.device | None = None,
    ):
        if not hasattr(objective, "weights"):
            raise TypeError("objective needs a `weights` dict naming its loss components")
        self.obj = objective
        self.ds = train_dataset
        self.cfg = config
        self.ckpt_dir = Path(checkpoint_dir)
        self.collate = collate
        self.eval_fn = eval_fn
        self.select_metric = select_metric
        # eval_fn may return (metrics, per-row predictions): the rule last_unless_significant compares them
        self.select_rule, self.compare = select_rule, compare
        self.callbacks = list(callbacks)
        self.device = device or default_device()
        self.world = distributed.world()
        distributed.broadcast_module(objective)  # every rank starts from rank 0's weights
        # The fingerprint ties a checkpoint to its run: a checkpoint left by other settings is not resumed.
        # ...and to what it started from: the objective's initial weights, the teacher and the training rows.
        teacher = getattr(objective, "teacher", None)
        fp = {"config": asdict(config), "n": len(train_dataset), "init": module_digest(objective),
              "teacher": module_digest(teacher) if teacher is not None else None,
              "data": dataset_digest(train_dataset), **(fingerprint or {})}
        self.fingerprint = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.lengths = row_lengths(train_dataset)
        per_epoch = math.ceil(len(self.lengths) / config.batch_size)
        self.batches_per_epoch = per_epoch
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))

    # -- state -------------------------------------------------------------------------------------------------
    def _trainable_state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.obj.state_dict().items() if k in self._trainable_keys}

    def _save_checkpoint(self, step: int, epoch: int, next_batch: int, best: dict) -> None:
        rngs = distributed.gather_objects(_rng_state())  # every rank's dropout/masking streams, for an exact resume
        if not self.world.main:
            return
        with atomic_dir(self.ckpt_dir) as tmp:  # a checkpoint is whole or absent; the previous one stays until then
            self._write_state(tmp / "state.pt", step, epoch, next_batch, best, rngs)

    def _write_state(self, path: Path, step: int, epoch: int, next_batch: int, best: dict, rngs: list) -> None:
        torch.save(
            {
                "fingerprint": self.fingerprint,
                "objective": self._trainable_state(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "rng": rngs[0],
                "rng_ranks": rngs,
                "step": step,
                "epoch": epoch,
                "next_batch": next_batch,
                "best": best,
                "evals": self.evals,
                "history": self.history,
            },
            path,
        )

    def _load_checkpoint(self) -> dict | None:
        path = self.ckpt_dir / "state.pt"
        if not path.is_file():
            return None
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            if self.world.main:
                tqdm.write(f"[{self.cfg.desc}] ignoring checkpoint {path}: it belongs to other settings or data")
            return None
        return state

    # -- loop --------------------------------------------------------------------------------------------------
    def _evaluate(self, step: int, best: dict) -> None:
        if self.eval_fn is None or not self.world.main:  # the others wait for rank 0 at the next step's reduction
            return
        self.obj.eval()
        out = self.eval_fn(self.obj)
        metrics, predictions = out if isinstance(out, tuple) else (out, None)
        self.obj.train()
        self.evals.append({"step": step, **metrics})
        for cb in self.callbacks:
            cb.on_eval(step, metrics)
        if self.select_metric:
            value = metrics[self.select_metric]
            if best.get("value") is None or value > best["value"]:
                best.update(value=value, step=step, state=self._trainable_state(), predictions=predictions)
            best["last"] = {"value": value, "step": step, "predictions": predictions}

    def _setup_optimizer(self) -> list:
        """AdamW over the objective's trainable parameters (no weight decay on biases and norms; per-parameter
        learning-rate scales when the objective asks for them) and the warm-up + linear-decay schedule. Returns the
        trainable parameters."""
        cfg = self.cfg
        params = [p for p in self.obj.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the objective has no trainable parameters")
        names = {id(p): n for n, p in self.obj.named_parameters()}
        self._trainable_keys = {names[id(p)] for p in params} | {
            n for n, _ in self.obj.named_buffers() if not n.startswith("teacher")
        }
        # An objective may scale the learning rate of some parameters (`lr_scales`: name -> factor), e.g. the
        # lower blocks in progressive knowledge transfer; the schedule then scales every group alike.
        scales = getattr(self.obj, "lr_scales", None) or {}
        groups: dict[tuple[bool, float], list] = {}
        for p in params:
            key = (p.ndim >= 2, float(scales.get(names[id(p)], 1.0)))
            groups.setdefault(key, []).append(p)
        self.opt = torch.optim.AdamW(
            [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * scale}
             for (decay, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))],
            lr=cfg.lr,
            # one fused kernel per step instead of a dozen ops per tensor: on CPU the per-tensor loop over the
            # embedding matrix cost as much as the student's backward pass
            fused=self.device.type in ("cpu", "cuda"),
        )
        warm = int(cfg.warmup_ratio * self.total_steps)
        total = self.total_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm))
        )
        return params

    def _resume(self, resume: bool) -> tuple[int, int, int, dict, int | None]:
        """Where training starts: (step, epoch, next batch, best state so far, step resumed from or None), from this
        run's checkpoint when there is one (weights, optimizer, schedule, every rank's random streams), else fresh."""
        cfg, w = self.cfg, self.world
        self.evals: list[dict] = []
        self.history: list[dict] = []
        state = self._load_checkpoint() if resume else None
        if state is None:
            seed_everything(cfg.seed + 1_000_003 * w.rank)  # rank 0 draws what a one-process run draws
            return 0, 0, 0, {}, None
        missing = self.obj.load_state_dict(state["objective"], strict=False)
        if missing.unexpected_keys:
            raise RuntimeError(f"checkpoint has unexpected keys {missing.unexpected_keys[:5]}")
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        rngs = state.get("rng_ranks") or [state["rng"]]
        step, epoch, next_batch = state["step"], state["epoch"], state["next_batch"]
        if len(rngs) == w.size:
            _set_rng_state(rngs[w.rank])
        else:  # saved with another process count: same batches and weights, fresh random streams
            seed_everything(cfg.seed + 1_000_003 * w.rank + step)
        self.evals = state["evals"]
        self.history = state.get("history", [])
        if w.main:
            tqdm.write(f"[{cfg.desc}] resumed from step {step} (epoch {epoch}, batch {next_batch})"
                       + (f" on {w.size} processes" if w.active else ""))
        return step, epoch, next_batch, state["best"], step

    def _forward_backward(self, rows_of_batch: list[int], step: int, scaler) -> dict[str, float]:
        """This rank's share of one batch: the loss components, checked finite, and their weighted sum's gradient
        (scaled by the rank's share of the rows and the accumulation). Returns the components' batch means."""
        cfg, w = self.cfg, self.world
        mine = rows_of_batch[w.rank :: w.size]
        share = len(mine) / len(rows_of_batch)  # this rank's part of the batch mean
        # a short last batch may leave a rank no row: it runs one with weight 0 to join the reductions
        rows = self.ds[mine or rows_of_batch[:1]]
        rows = [dict(zip(rows, vals)) for vals in zip(*rows.values())]
        batch = {k: v.to(self.device) for k, v in self.collate(rows).items()}
        with autocast(cfg.precision, self.device):
            comps = self.obj(batch)
        values = self._batch_means(comps, share)
        for name, value in values.items():
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"[{cfg.desc}] step {step + 1}: loss component '{name}' is {value}; "
                    f"stopping (the last good checkpoint in {self.ckpt_dir} is kept)"
                )
        loss = sum(self.obj.weights.get(k, 0.0) * v for k, v in comps.items())
        scaled = loss * share / cfg.grad_accum if w.active else loss / cfg.grad_accum
        (scaler.scale(scaled) if scaler else scaled).backward()
        return values

    def _optimizer_step(self, params: list, scaler) -> None:
        """Gradients summed across ranks, clipped, one optimizer and schedule step."""
        distributed.reduce_gradients(params)  # before unscaling: an overflow on any rank skips the step on all
        if scaler:  # fp16: unscale before clipping; the scaler skips steps whose gradients overflowed
            scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
            scaler.step(self.opt)
            scaler.update()
        else:
            clip_gradients(params, self.cfg.max_grad_norm)
            self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def train(self, resume: bool = True) -> TrainResult:
        cfg = self.cfg
        self.obj.to(self.device).train()
        install_fast_dropout(self.obj)  # same dropout, a cheaper CPU mask (kdistill.train.dropout)
        params = self._setup_optimizer()
        total = self.total_steps
        step, epoch, next_batch, best, resumed_from = self._resume(resume)
        w = self.world
        if cfg.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"TrainerConfig.precision must be resolved to fp32, bf16 or fp16 (got {cfg.precision!r})")
        scaler = grad_scaler(cfg.precision, self.device)
        bar = tqdm(total=total, initial=step, desc=cfg.desc, unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=not w.main)
        micro = 0
        done = step >= total
        while not done:
            batches = epoch_batches(self.lengths, cfg.batch_size, cfg.seed, epoch, cfg.length_grouping)
            for bi in range(next_batch, len(batches)):
                values = self._forward_backward(batches[bi].tolist(), step, scaler)
                micro += 1
                if micro % cfg.grad_accum:
                    continue
                self._optimizer_step(params, scaler)
                step += 1
                total_loss = sum(self.obj.weights.get(k, 0.0) * v for k, v in values.items())
                self.history.append({"step": step, "loss": total_loss, "lr": self.sched.get_last_lr()[0], **values})
                if w.main:
                    for cb in self.callbacks:
                        cb.on_step(step, values, total_loss, self.sched.get_last_lr()[0])
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss:.4f}", refresh=False)
                if cfg.eval_every and step % cfg.eval_every == 0:
                    self._evaluate(step, best)
                if step % cfg.checkpoint_every == 0 and step < total:
                    # next_batch may equal len(batches): a resumed run then replays this epoch's end-of-epoch work
                    self._save_checkpoint(step, epoch, bi + 1, best)
                if step >= total:
                    done = True
                    break
            else:
                if not cfg.eval_every:
                    self._evaluate(step, best)
            epoch += 1
            next_batch = 0
        bar.close()
        if self.eval_fn is not None and (not self.evals or self.evals[-1]["step"] != step):
            self._evaluate(step, best)
        kept, record = None, None
        if best.get("state") is not None:
            back, record = choose(self.select_rule, best, best["last"], self.compare)
            kept = best if back else best["last"]
            if back:
                self.obj.load_state_dict(best["state"], strict=False)
            if w.main:
                tqdm.write(f"[{cfg.desc}] kept the state of step {record['kept_step']} ({self.select_rule}: "
                           + (f"best step {record['best_step']} leads by {record['lead']:+.4f} +- {record['lead_se']:.4f}"
                              if "lead" in record else f"best step {record['best_step']}, last step {record['last_step']}")
                           + ")")
        if self.eval_fn is not None:
            distributed.broadcast_module(self.obj)  # rank 0 chose the state: every rank goes on from it
        # The run is complete: its checkpoint has served (resuming is for interrupted runs only).
        if w.main:
            self.clear_checkpoint()
        return TrainResult(step, kept["value"] if kept else None, kept["step"] if kept else None, self.evals,
                           resumed_from, self.history, record)

    def _batch_means(self, comps: dict[str, torch.Tensor], share: float) -> dict[str, float]:
        """Each component's value over the whole global batch: the ranks' shares of it, summed."""
        if not self.world.active:
            return {k: float(v.detach()) for k, v in comps.items()}
        vals = torch.stack([v.detach().float() for v in comps.values()]) * share
        return dict(zip(comps, distributed.all_reduce_sum(vals).tolist()))

    def clear_checkpoint(self) -> None:
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)
