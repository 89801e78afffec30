import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from datasets import Dataset

from kdistill.distill.objectives import Prediction, Supervised, teacher_logits
from kdistill.train.trainer import (
    NonFiniteLossError,
    Trainer,
    TrainerConfig,
    clip_gradients,
    epoch_batches,
    pad_collate,
)

from .conftest import ROOT


def _run_worker(workdir, delay):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tests.train_worker", str(workdir), str(delay)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    p = _run_worker(straight, 0.0)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    p = _run_worker(killed, 0.3)
    state = killed / "ckpt" / "state.pt"
    deadline = time.time() + 240
    while time.time() < deadline:
        if state.exists():
            step = torch.load(state, weights_only=False)["step"]
            if step >= 4:  # 5 optimizer steps per epoch: step 4 is mid-epoch
                break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "final.pt").exists()
    ck = torch.load(state, weights_only=False)
    assert 0 < ck["step"] < 15 and ck["next_batch"] % 10 != 0  # killed mid-epoch, mid-run
    p = _run_worker(killed, 0.0)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    a = torch.load(straight / "final.pt")
    b = torch.load(killed / "final.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def _tiny_task(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(5, 30, (6,), generator=g).tolist() for _ in range(n)]
    labels = [int(r[1] > 17) for r in rows]
    return Dataset.from_dict({"input_ids": rows, "labels": labels, "row": list(range(n))})


def test_nan_loss_stops_with_step_and_component(make_bert, tmp_path):
    model = make_bert("seq")
    ds = _tiny_task()

    class Poisoned(Supervised):
        calls = 0

        def forward(self, batch):
            Poisoned.calls += 1
            out = super().forward(batch)
            if Poisoned.calls == 3:
                out["hard"] = out["hard"] * float("nan")
            return out

    cfg = TrainerConfig(batch_size=4, epochs=1, checkpoint_every=1)
    tr = Trainer(Poisoned(model), ds, cfg, tmp_path / "ckpt", device=torch.device("cpu"))
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss component 'hard' is nan"):
        tr.train()
    assert torch.load(tmp_path / "ckpt" / "state.pt", weights_only=False)["step"] == 2  # last good checkpoint kept


def test_training_learns_and_best_checkpoint_is_selected(make_bert, tmp_path):
    model = make_bert("seq")
    ds = _tiny_task(64)
    evals = []

    def eval_fn(obj):
        with torch.no_grad():
            b = pad_collate([ds[i] for i in range(len(ds))])
            pred = obj.student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(-1)
        acc = float((pred == b["labels"]).float().mean())
        evals.append(acc)
        return {"accuracy": acc}

    cfg = TrainerConfig(lr=3e-3, batch_size=8, epochs=12, eval_every=4, checkpoint_every=100, warmup_ratio=0.0)
    res = Trainer(Supervised(model), ds, cfg, tmp_path / "c", eval_fn=eval_fn, select_metric="accuracy",
                  device=torch.device("cpu")).train()
    assert res.best_metric == max(evals) and res.best_metric > 0.7
    model.eval()  # as the trainer evaluates: without dropout
    assert eval_fn(Supervised(model))["accuracy"] == res.best_metric  # best weights restored


def test_teacher_stays_in_eval_and_gets_no_grad_and_cache_is_used(make_bert, tmp_path):
    teacher, student = make_bert("seq", seed=1), make_bert("seq", seed=2)
    ds = _tiny_task()
    cache = teacher_logits(teacher, ds, pad_collate, batch_size=5)
    with torch.no_grad():
        b = pad_collate([ds[i] for i in range(3)])
        direct = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    assert torch.allclose(cache[:3], direct, atol=1e-5)
    obj = Prediction(student, teacher, {"pred": 1.0}, temperature=2.0, cached_logits=cache)
    obj.train()
    assert not teacher.training and student.training
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    Trainer(obj, ds, TrainerConfig(batch_size=8, epochs=2), tmp_path / "c", device=torch.device("cpu")).train()
    assert calls == []  # cached: the teacher never ran during training
    assert all(p.grad is None for p in teacher.parameters())
    assert "teacher" not in " ".join(obj.state_dict())


def test_teacher_logit_disk_cache_is_shared_and_keyed_by_content(make_bert, tmp_path, capsys):
    teacher = make_bert("seq", seed=1)
    ds = _tiny_task()
    first = teacher_logits(teacher, ds, pad_collate, batch_size=5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    calls = []
    hook = teacher.register_forward_hook(lambda *a: calls.append(1))
    again = teacher_logits(teacher, ds, pad_collate, batch_size=5, cache_dir=tmp_path)
    assert calls == [] and torch.equal(first, again) and "reusing" in capsys.readouterr().out
    hook.remove()
    # bf16 soft targets are close to the fp32 ones but cached under their own key
    half = teacher_logits(teacher, ds, pad_collate, batch_size=5, precision="bf16", cache_dir=tmp_path)
    assert torch.allclose(half, first, atol=0.1) and len(list(tmp_path.glob("*.pt"))) == 2
    with torch.no_grad():  # a changed teacher is a new key: never stale logits
        next(teacher.parameters()).add_(0.5)
    changed = teacher_logits(teacher, ds, pad_collate, batch_size=5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 3 and not torch.equal(changed, first)
    fewer = teacher_logits(teacher, ds.select(range(10)), pad_collate, batch_size=5, cache_dir=tmp_path)
    assert fewer.shape[0] == 10 and len(list(tmp_path.glob("*.pt"))) == 4


def test_checkpoint_is_resumed_only_by_the_same_start_weights_teacher_and_data(make_bert, tmp_path):
    class Stop(Exception):
        pass

    class StopAt:
        def on_step(self, step, components, total, lr):
            if step == 3:
                raise Stop

        def on_eval(self, step, metrics):
            pass

    cfg = TrainerConfig(batch_size=8, epochs=2, checkpoint_every=2)
    ds = _tiny_task()

    def trainer(model, data=ds, teacher=None, callbacks=()):
        obj = Prediction(model, teacher, {"pred": 1.0, "hard": 1.0}) if teacher is not None else Supervised(model)
        return Trainer(obj, data, cfg, tmp_path / "ck", callbacks=callbacks, device=torch.device("cpu"))

    def interrupted(**kw):
        with pytest.raises(Stop):
            trainer(make_bert("seq", seed=2), callbacks=[StopAt()], **kw).train()

    interrupted()
    assert trainer(make_bert("seq", seed=3)).train().resumed_from is None  # another start: not this run's checkpoint
    interrupted()
    assert trainer(make_bert("seq", seed=2), data=_tiny_task(seed=1)).train().resumed_from is None  # other rows
    interrupted(teacher=make_bert("seq", seed=7))
    assert trainer(make_bert("seq", seed=2), teacher=make_bert("seq", seed=8)).train().resumed_from is None
    interrupted()
    assert trainer(make_bert("seq", seed=2)).train().resumed_from == 2  # the same run resumes


def _reference_batches(lengths, batch_size, seed, epoch):
    """The order as first written, with Python lists: the tensor version must keep it (runs stay reproducible)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    window = batch_size * 50
    perm = [i for s in range(0, len(perm), window) for i in sorted(perm[s : s + window], key=lambda j: -lengths[j])]
    batches = [perm[s : s + batch_size] for s in range(0, len(perm), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def test_epoch_batches_are_deterministic_grouped_and_complete():
    lengths = [i % 17 + 1 for i in range(1000)]
    a = [b.tolist() for b in epoch_batches(lengths, 32, seed=1, epoch=0)]
    assert a == [b.tolist() for b in epoch_batches(lengths, 32, seed=1, epoch=0)]
    assert a != [b.tolist() for b in epoch_batches(lengths, 32, seed=1, epoch=1)]
    assert a == _reference_batches(lengths, 32, seed=1, epoch=0)
    mixed = [(i * 7919) % 61 + 1 for i in range(5003)]  # many ties, a short last window and batch
    assert [b.tolist() for b in epoch_batches(mixed, 16, 3, 2)] == _reference_batches(mixed, 16, 3, 2)
    assert sorted(i for b in a for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 3  # length grouping keeps padding small


def test_regression_task_uses_mse_soft_target_and_pearson(make_bert, tmp_path):
    from kdistill.train.evaluation import score

    teacher, student = make_bert("seq", seed=1, num_labels=1), make_bert("seq", seed=2, num_labels=1)
    ds = _tiny_task(16)
    ds = ds.map(lambda r: {"labels": float(r["input_ids"][1] % 5)})
    obj = Prediction(student, teacher, {"pred": 1.0}, temperature=3.0)
    b = pad_collate([ds[i] for i in range(4)])
    with torch.no_grad():
        want = torch.mean((student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.view(-1)
                           - teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.view(-1)) ** 2)
        assert torch.allclose(obj(b)["pred"], want, atol=1e-6)  # MSE to the teacher, temperature plays no part
    m = score(student, ds, "stsb")
    assert set(m) == {"pearson", "spearman"} and -1.0 <= m["pearson"] <= 1.0


def test_clip_gradients_matches_clip_grad_norm():
    torch.manual_seed(0)
    for scale in (0.01, 10.0):  # within the bound (left as is) and above it (rescaled)
        a = [torch.nn.Parameter(torch.zeros(s)) for s in ((7, 3), (5,), (2, 2, 2))]
        b = [torch.nn.Parameter(torch.zeros(s)) for s in ((7, 3), (5,), (2, 2, 2))]
        for p, q in zip(a, b):
            p.grad = torch.randn(p.shape) * scale
            q.grad = p.grad.clone()
        clip_gradients(a, 1.0)
        torch.nn.utils.clip_grad_norm_(b, 1.0)
        for p, q in zip(a, b):
            assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7)
