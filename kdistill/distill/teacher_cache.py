"""The teacher's intermediate outputs for every training row, computed once and read memory-mapped afterwards.

Intermediate distillation (TinyBERT's task stage 1, MobileBERT's layer-wise transfer) compares the student's hidden
states and attention scores with the teacher's at every step of every epoch, although the teacher's never change.
For a multi-epoch phase the teacher's mapped layers are computed in one pass (rows sorted by length, so little
padding), stored in half precision on disk and read back per batch: later epochs run the student alone.

Layout: `<cache_dir>/<key>/hidden.npy` and `scores.npy`, flat fp16 arrays holding each row unpadded
([n_hidden, len, width] then [n_scores, heads, len, len]), `offsets.npy` with each row's start in both, `meta.json`.
A loss on attention probabilities gets the probabilities stored (the teacher's own softmax, formed once), one on
pre-softmax scores the scores.
The key is the content (teacher weights, the rows' token ids, the stored layers, the precision), as for the
teacher-logit cache, so a changed teacher or row set never reads a stale cache. Only real tokens are stored: a loss
that reads padded positions (TinyBERT's `mask_padding: false`) cannot use the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kdistill.data.batches import row_lengths
from kdistill.distill.features import FeatureSpec, run_layers
from kdistill.fingerprint import dataset_digest, module_digest
from kdistill.io import atomic_dir
from kdistill.train.precision import autocast

FP16_MAX = 65504.0


class _Overflow(Exception):
    """A teacher value too large for the half-precision cache: build nothing."""


def cache_bytes(lengths: list[int], spec: FeatureSpec, width: int, heads: int) -> int:
    n = np.asarray(lengths, dtype=np.int64)
    return int(2 * (len(spec.hidden) * width * n.sum() + len(spec.scores) * heads * (n**2).sum()))


class TeacherFeatures:
    """A built cache, opened memory-mapped. `lookup(rows, attention_mask)` gives a padded batch of teacher outputs."""

    def __init__(self, path: Path):
        meta = json.loads((path / "meta.json").read_text())
        self.path = path
        self.spec = FeatureSpec(tuple(meta["hidden"]), tuple(meta["scores"]), bool(meta.get("probs", False)))
        self.width, self.heads = meta["width"], meta["heads"]
        self.lengths = np.load(path / "lengths.npy")
        offsets = np.load(path / "offsets.npy")
        self.h_off, self.s_off = offsets[0], offsets[1]
        # copy-on-write maps: readable as torch tensors without a read-only warning, never written back
        self.hidden = np.load(path / "hidden.npy", mmap_mode="c")
        self.scores = np.load(path / "scores.npy", mmap_mode="c")

    def lookup(self, rows: torch.Tensor, attention_mask: torch.Tensor):
        """(hidden, scores) shaped like the teacher's own: hidden[i] is [B, L, width] for a kept index i (else
        None), scores[l - 1] is [B, heads, L, L] for a kept layer l (else None), scores or probabilities as
        `spec.probs` says; padded positions hold zeros."""
        b, L = attention_mask.shape
        kh, ks, w, h = len(self.spec.hidden), len(self.spec.scores), self.width, self.heads
        hid = torch.zeros(kh, b, L, w, dtype=torch.float16)
        sc = torch.zeros(ks, b, h, L, L, dtype=torch.float16)
        real = attention_mask.sum(1).tolist()
        for i, r in enumerate(rows.tolist()):
            n = int(self.lengths[r])
            if n != real[i]:
                raise ValueError(f"teacher cache {self.path}: row {r} has {n} tokens cached but {real[i]} in the batch")
            o = int(self.h_off[r])
            hid[:, i, :n] = torch.from_numpy(self.hidden[o : o + kh * n * w]).view(kh, n, w)
            o = int(self.s_off[r])
            sc[:, i, :, :n, :n] = torch.from_numpy(self.scores[o : o + ks * h * n * n]).view(ks, h, n, n)
        device = attention_mask.device
        hidden: list = [None] * (max(self.spec.hidden, default=0) + 1)
        for j, idx in enumerate(self.spec.hidden):
            hidden[idx] = hid[j].to(device, torch.float32)
        scores: list = [None] * max(self.spec.scores, default=0)
        for j, layer in enumerate(self.spec.scores):
            scores[layer - 1] = sc[j].to(device, torch.float32)
        return hidden, scores


@torch.inference_mode()
def build_teacher_features(
    teacher: torch.nn.Module,
    dataset,
    collate,
    spec: FeatureSpec,
    cache_dir: str | Path,
    budget_gb: float,
    precision: str = "fp32",
    batch_size: int = 64,
) -> TeacherFeatures | None:
    """The cache for `dataset` under `cache_dir`, built unless an identical one exists; None (with the reason
    printed) when it would not fit `budget_gb` or the free disk, or when a value would overflow half precision."""

    cfg = teacher.config
    width, heads = cfg.hidden_size, cfg.num_attention_heads
    lengths = row_lengths(dataset)
    need = cache_bytes(lengths, spec, width, heads)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if need > budget_gb * 2**30:
        print(f"[teacher_cache] not used: {need / 2**30:.2f} GiB needed, budget {budget_gb} GiB (raise the budget in params)")
        return None
    if need > 0.9 * free:
        print(f"[teacher_cache] not used: {need / 2**30:.2f} GiB needed, {free / 2**30:.2f} GiB free on {cache_dir}")
        return None
    key = (f"v1 precision={precision} hidden={list(spec.hidden)} scores={list(spec.scores)} probs={spec.probs} "
           f"{module_digest(teacher)} "
           f"{dataset_digest(dataset, ('input_ids', 'token_type_ids'))}")
    path = cache_dir / hashlib.sha256(key.encode()).hexdigest()[:24]
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per key; stages running side by side wait and read
        if (path / "meta.json").is_file():
            print(f"[teacher_cache] reusing {path}")
            return TeacherFeatures(path)
        try:
            # atomic: a cache is whole or absent; stale temporaries of killed builds are removed first
            with atomic_dir(path) as tmp:
                n = np.asarray(lengths, dtype=np.int64)
                h_size, s_size = len(spec.hidden) * width * n, len(spec.scores) * heads * n**2
                offsets = np.stack([np.concatenate([[0], np.cumsum(h_size)[:-1]]), np.concatenate([[0], np.cumsum(s_size)[:-1]])])
                hidden = np.lib.format.open_memmap(tmp / "hidden.npy", "w+", np.float16, (max(1, int(h_size.sum())),))
                scores = np.lib.format.open_memmap(tmp / "scores.npy", "w+", np.float16, (max(1, int(s_size.sum())),))
                teacher.eval()
                device = next(teacher.parameters()).device
                order = np.argsort(lengths, kind="stable").tolist()
                bar = tqdm(total=len(order), desc="teacher cache", unit="row", dynamic_ncols=True, mininterval=1.0)
                for s in range(0, len(order), batch_size):
                    idx = order[s : s + batch_size]
                    rows = dataset[idx]
                    batch = collate([dict(zip(rows, vals)) for vals in zip(*rows.values())])
                    batch = {k: v.to(device) for k, v in batch.items()}
                    with autocast(precision, device):
                        t_hidden, t_scores = run_layers(teacher, batch, spec.deepest, bool(spec.scores), spec.scores, spec.probs)
                    kept_h = torch.stack([t_hidden[i].float() for i in spec.hidden]) if spec.hidden else None
                    kept_s = torch.stack([t_scores[l - 1].float() for l in spec.scores]) if spec.scores else None
                    for t in (kept_h, kept_s):
                        if t is not None and not bool(t.abs().max() < FP16_MAX):
                            bar.close()
                            raise _Overflow
                    for j, r in enumerate(idx):
                        m = lengths[r]
                        if kept_h is not None:
                            o = offsets[0, r]
                            hidden[o : o + h_size[r]] = kept_h[:, j, :m].half().cpu().numpy().ravel()
                        if kept_s is not None:
                            o = offsets[1, r]
                            scores[o : o + s_size[r]] = kept_s[:, j, :, :m, :m].half().cpu().numpy().ravel()
                    bar.update(len(idx))
                bar.close()
                hidden.flush()
                scores.flush()
                del hidden, scores
                np.save(tmp / "lengths.npy", n)
                np.save(tmp / "offsets.npy", offsets)
                meta = {"hidden": list(spec.hidden), "scores": list(spec.scores), "probs": spec.probs, "width": width, "heads": heads,
                        "rows": len(lengths), "bytes": need, "precision": precision, "key": key[:200]}
                (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        except _Overflow:
            print(f"[teacher_cache] not used: a teacher value exceeds half precision's range ({FP16_MAX})")
            return None
        print(f"[teacher_cache] built {path} ({need / 2**30:.2f} GiB, {len(lengths)} rows)")
    return TeacherFeatures(path)


def features_for(objective, teacher, dataset, collate, cfg, cache_dir: str | Path, budget_gb: float) -> TeacherFeatures | None:
    """The cache an intermediate objective (`feature_spec()`) should read in a phase trained with `cfg`, or None
    with the reason printed: a phase that reads each row once gains nothing from storing the teacher's outputs."""
    spec = objective.feature_spec()
    passes = cfg.max_steps * cfg.batch_size * cfg.grad_accum / max(1, len(dataset)) if cfg.max_steps else cfg.epochs
    if budget_gb <= 0:
        print("[teacher_cache] not used: its disk budget is 0")
    elif spec is None:
        print("[teacher_cache] not used: the loss reads padded positions (mask_padding: false), which it does not keep")
    elif passes <= 1:
        print(f"[teacher_cache] not used: the phase reads each row at most once ({passes:.2f} epochs)")
    else:
        return build_teacher_features(teacher, dataset, collate, spec, cache_dir, budget_gb, cfg.precision)
    return None
