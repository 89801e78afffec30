"""The MobileBERT-style recipe: student shape, its losses against hand computations, progressive freezing, resume."""

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import BertForMaskedLM, BertModel, MobileBertForMaskedLM

from kdistill.deploy.speed import flops_per_example
from kdistill.distill import losses as L
from kdistill.distill.objectives import (
    FeatureTransfer,
    MobileBertPretrain,
    progressive_scope,
    run_layers,
)
from kdistill.models import ModelSpecError, mobilebert_config
from kdistill.train.trainer import Trainer, TrainerConfig

from .conftest import ROOT, tiny_config
from .progressive_worker import corpus


def _student(teacher_cfg, bottleneck=8, heads=2, ffn=16, stacked=3, seed=1):
    torch.manual_seed(seed)
    return MobileBertForMaskedLM(mobilebert_config(teacher_cfg, bottleneck, heads, ffn, stacked, embedding=8))


def _batch():
    ids = torch.tensor([[2, 7, 9, 11, 3, 0, 0], [2, 5, 6, 8, 10, 12, 3]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}


def test_student_keeps_teacher_depth_and_width_with_a_narrow_body():
    t_cfg = tiny_config(layers=3, hidden=32, heads=4)
    s = _student(t_cfg)
    cfg = s.config
    assert cfg.num_hidden_layers == 3 and cfg.hidden_size == 32 and cfg.vocab_size == t_cfg.vocab_size
    block = s.mobilebert.encoder.layer[0]
    assert block.bottleneck.input.dense.in_features == 32 and block.bottleneck.input.dense.out_features == 8
    assert block.output.bottleneck.dense.out_features == 32  # back to the inter-block width
    assert len(block.ffn) + 1 == 3  # stacked feed-forward networks
    assert block.attention.self.num_attention_heads == 2 and block.attention.self.attention_head_size == 4
    hidden, scores = run_layers(s, _batch(), 3, want_attn=True)
    assert [h.shape for h in hidden] == [torch.Size([2, 7, 32])] * 4  # embeddings + 3 blocks, teacher-wide
    assert [a.shape for a in scores] == [torch.Size([2, 2, 7, 7])] * 3


def test_run_layers_stops_after_the_requested_layer_and_matches_the_full_forward():
    torch.manual_seed(0)
    m = BertModel(tiny_config(layers=3, hidden=16, heads=4)).eval()
    full = m(**_batch(), output_hidden_states=True).hidden_states
    hidden, _ = run_layers(m, _batch(), 2, want_attn=False)
    assert len(hidden) == 3
    for a, b in zip(hidden, full):
        torch.testing.assert_close(a, b)


def test_student_shape_errors_name_the_fix():
    with pytest.raises(ModelSpecError, match="must divide its bottleneck"):
        mobilebert_config(tiny_config(hidden=32, heads=4), bottleneck=10, heads=4, ffn=16, stacked_ffn=2, embedding=8)
    with pytest.raises(ModelSpecError, match="must not exceed the block width"):
        mobilebert_config(tiny_config(hidden=32, heads=4), bottleneck=8, heads=4, ffn=16, stacked_ffn=2, embedding=64)
    with pytest.raises(ModelSpecError, match="teacher's 4 heads"):
        mobilebert_config(tiny_config(hidden=32, heads=4), bottleneck=9, heads=3, ffn=16, stacked_ffn=2, embedding=8)


def test_feature_map_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    tokens = [(b, i) for b in range(2) for i in range(3) if mask[b, i]]
    plain = sum(((s[b, i] - t[b, i]) ** 2).sum() for b, i in tokens) / (len(tokens) * 4)
    torch.testing.assert_close(L.feature_map_loss(s, t, mask, normalize=False), plain)

    def stats(v):
        mu = sum(v) / len(v)
        var = sum((x - mu) ** 2 for x in v) / len(v)
        return mu, var, [(x - mu) / math.sqrt(var + 1e-6) for x in v]

    total = 0.0
    for b, i in tokens:
        ms, vs, ns = stats(s[b, i].tolist())
        mt, vt, nt = stats(t[b, i].tolist())
        total += sum((x - y) ** 2 for x, y in zip(ns, nt)) / 4 + 0.5 * (ms - mt) ** 2 + 2.0 * abs(vs - vt)
    got = L.feature_map_loss(s, t, mask, normalize=True, mean_weight=0.5, var_weight=2.0)
    assert got.item() == pytest.approx(total / len(tokens), rel=1e-5)
    assert L.feature_map_loss(t, t, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_kl_matches_a_hand_computation_with_grouped_teacher_heads():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 2, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    total, n = 0.0, 0
    for b in range(2):
        keys = [k for k in range(3) if mask[b, k]]
        for h in range(2):
            for q in keys:  # padded queries do not count
                ps = torch.softmax(s[b, h, q, keys], -1)
                pt = (torch.softmax(t[b, 2 * h, q, keys], -1) + torch.softmax(t[b, 2 * h + 1, q, keys], -1)) / 2
                total += float((pt * (pt.log() - ps.log())).sum())
                n += 1
    assert L.attention_kl(s, t, mask).item() == pytest.approx(total / n, rel=1e-5)
    assert L.attention_kl(t, t, mask).item() == pytest.approx(0.0, abs=1e-6)  # equal heads: one to one
    with pytest.raises(ValueError, match="must divide"):
        L.attention_kl(torch.randn(1, 3, 2, 2), torch.randn(1, 4, 2, 2), torch.ones(1, 2))


def _teacher(layers=3):
    torch.manual_seed(0)
    return BertForMaskedLM(tiny_config(layers=layers, hidden=32, heads=4)).eval()


def test_objectives_give_finite_components_and_gradients_only_where_they_should():
    teacher = _teacher()
    student = _student(teacher.config)
    obj = FeatureTransfer(student, teacher, [2], [1, 2, 3], {"fmt": 1.0, "at": 1.0})
    progressive_scope(student, 2)
    out = obj(_batch())
    assert set(out) == {"fmt", "at"} and all(torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    for name, p in student.named_parameters():
        if ".encoder.layer.1." in name:
            assert p.requires_grad and p.grad is not None, name
        else:  # blocks below and above, embeddings, MLM head: frozen, no gradient
            assert not p.requires_grad and p.grad is None, name
    pre = MobileBertPretrain(student, teacher, [1, 2, 3], {"mlm": 0.5, "kd": 0.5, "fmt": 1.0, "at": 1.0},
                             special_ids=(0, 2, 3), mask_token_id=4, mlm_probability=0.5)
    torch.manual_seed(0)
    comps = pre(_batch())
    assert set(comps) == {"mlm", "kd", "fmt", "at"} and all(torch.isfinite(v) for v in comps.values())


def _train(obj, steps=3):
    cfg = TrainerConfig(lr=1e-2, batch_size=4, max_steps=steps, warmup_ratio=0.0, seed=0, checkpoint_every=100)
    Trainer(obj, corpus(), cfg, "/nonexistent/never-written", device=torch.device("cpu")).train(resume=False)


def test_progressive_stage_really_freezes_the_blocks_below():
    teacher = _teacher()
    student = _student(teacher.config)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    obj = FeatureTransfer(student, teacher, [2], [1, 2, 3], {"fmt": 1.0, "at": 1.0})
    obj.lr_scales = {f"student.{k}": v for k, v in progressive_scope(student, 2, 0.0).items()}
    _train(obj)
    after = student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".encoder.layer.1." in k for k in changed)
    assert not any(k.startswith("mobilebert.embeddings") or ".encoder.layer.0." in k for k in changed)


def test_progressive_stage_with_reduced_lr_gives_lower_blocks_a_scaled_lr_group():
    teacher = _teacher()
    student = _student(teacher.config)
    obj = FeatureTransfer(student, teacher, [2], [1, 2, 3], {"fmt": 1.0, "at": 1.0})
    scales = progressive_scope(student, 2, 0.1)
    assert scales["mobilebert.encoder.layer.0.attention.self.query.weight"] == 0.1
    assert scales["mobilebert.encoder.layer.1.attention.self.query.weight"] == 1.0
    assert "mobilebert.encoder.layer.2.attention.self.query.weight" not in scales  # above: not in the loss
    obj.lr_scales = {f"student.{k}": v for k, v in scales.items()}
    trainer = Trainer(obj, corpus(), TrainerConfig(lr=1e-2, batch_size=4, max_steps=1, warmup_ratio=0.0),
                      "/nonexistent/never-written", device=torch.device("cpu"))
    trainer.train(resume=False)
    lrs = sorted({round(g["initial_lr"], 6) for g in trainer.opt.param_groups})
    assert lrs == [1e-3, 1e-2]


def test_flops_count_bert_exactly_and_mobilebert_below_the_teacher():
    torch.manual_seed(0)
    cfg = tiny_config(layers=2, hidden=16, heads=4, ffn=32)
    bert = BertModel(cfg)
    seq, h, f = 8, 16, 32
    expected = 2 * (2 * seq * (4 * h * h + 2 * h * f) + 2 * 2 * seq * seq * h) + 2 * h * h  # + pooler
    assert flops_per_example(bert, seq) == expected
    assert flops_per_example(_student(_teacher().config), 16) < flops_per_example(_teacher(), 16)


def _worker(workdir, delay, out=subprocess.DEVNULL):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tests.progressive_worker", str(workdir), str(delay)], cwd=ROOT,
                            env=env, stdout=out, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_mid_progression_then_resume_gives_identical_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    p = _worker(straight, 0.0)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    p = _worker(killed, 0.25)
    phases = killed / "phases"
    deadline = time.time() + 240
    while time.time() < deadline:  # block 1 finished, block 2 part-way
        if (phases / "layer1.done.pt").exists() and (phases / "layer2" / "state.pt").exists():
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "final.pt").exists() and (phases / "layer1.done.pt").exists()
    p = _worker(killed, 0.0, out=subprocess.PIPE)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-2000:]
    assert "already finished" in out.decode() and "resumed from step" in out.decode()  # block 1 loaded, block 2 resumed
    a, b = torch.load(straight / "final.pt"), torch.load(killed / "final.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def test_teacher_initialised_embeddings_reproduce_the_teachers_sum_before_the_norm(make_bert):
    from transformers import MobileBertModel

    from kdistill.models import init_mobilebert_embeddings, mobilebert_config

    teacher = make_bert("base", layers=2, hidden=24, heads=4)
    ids = torch.randint(5, 30, (2, 7))
    types = torch.zeros_like(ids)

    def pre_norm_sum(emb, trigram):
        x = emb.word_embeddings(ids)
        if trigram:
            x = torch.cat([torch.nn.functional.pad(x[:, 1:], [0, 0, 0, 1]), x,
                           torch.nn.functional.pad(x[:, :-1], [0, 0, 1, 0])], dim=2)
            x = emb.embedding_transformation(x)
        return x + emb.position_embeddings.weight[:7] + emb.token_type_embeddings(types)

    want = pre_norm_sum(teacher.embeddings, False)
    full = MobileBertModel(mobilebert_config(teacher.config, 8, 4, 16, 2, embedding=24))
    with torch.no_grad():
        assert init_mobilebert_embeddings(full, teacher) < 1e-6  # a full-width table drops nothing: exact
        assert torch.allclose(pre_norm_sum(full.embeddings, True), want, atol=1e-4)
    narrow = MobileBertModel(mobilebert_config(teacher.config, 8, 4, 16, 2, embedding=8))
    with torch.no_grad():
        dropped = init_mobilebert_embeddings(narrow, teacher)
        err = (pre_norm_sum(narrow.embeddings, True) - want).pow(2).mean()
        rand = MobileBertModel(mobilebert_config(teacher.config, 8, 4, 16, 2, embedding=8))
        err_rand = (pre_norm_sum(rand.embeddings, True) - want).pow(2).mean()
    assert 0 < dropped < 1 and err < err_rand / 10  # the top directions keep most of the teacher's embedding
