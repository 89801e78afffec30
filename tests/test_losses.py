"""Losses against values worked out by hand on tiny tensors, and gradients against finite differences."""

import math

import pytest
import torch

from kdistill.distill import losses as L


def test_soft_label_kl_ce_and_mean_classes_by_hand():
    s = torch.tensor([[0.0, math.log(3.0)]])  # softmax -> [1/4, 3/4]
    t = torch.tensor([[math.log(3.0), 0.0]])  # softmax -> [3/4, 1/4]
    ce = -(0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert L.soft_label_loss(s, t, kind="ce").item() == pytest.approx(ce, rel=1e-6)
    assert L.soft_label_loss(s, t, kind="kl").item() == pytest.approx(ce - entropy, rel=1e-6)
    assert L.soft_label_loss(s, t, kind="ce_mean_classes").item() == pytest.approx(ce / 2, rel=1e-6)


def test_soft_label_temperature_and_t2_scaling():
    # T = 2: logits halve; [0, 2 ln 3] / 2 -> softmax [1/4, 3/4] again
    s = torch.tensor([[0.0, 2 * math.log(3.0)]])
    t = torch.tensor([[2 * math.log(3.0), 0.0]])
    ce = -(0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    assert L.soft_label_loss(s, t, 2.0, "ce").item() == pytest.approx(ce, rel=1e-6)
    assert L.soft_label_loss(s, t, 2.0, "ce", t2_scaling=True).item() == pytest.approx(4 * ce, rel=1e-6)


def test_kl_and_ce_have_the_same_gradient():
    torch.manual_seed(0)
    t = torch.randn(4, 3)
    s1 = torch.randn(4, 3, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    L.soft_label_loss(s1, t, 3.0, "kl").backward()
    L.soft_label_loss(s2, t, 3.0, "ce").backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-7)


def test_soft_label_gradient_closed_form_and_finite_difference():
    # d/dz_S of CE(softmax(z_T/T), log_softmax(z_S/T)) averaged over B rows = (p_S - p_T) / (T * B)
    torch.manual_seed(1)
    T, B = 2.0, 3
    t = torch.randn(B, 4, dtype=torch.float64)
    s = torch.randn(B, 4, dtype=torch.float64, requires_grad=True)
    L.soft_label_loss(s, t, T, "ce").backward()
    closed = (torch.softmax(s.detach() / T, -1) - torch.softmax(t / T, -1)) / (T * B)
    assert torch.allclose(s.grad, closed, atol=1e-10)
    eps, fd = 1e-6, torch.zeros_like(s)
    for i in range(B):
        for j in range(4):
            d = torch.zeros_like(s)
            d[i, j] = eps
            fd[i, j] = (L.soft_label_loss(s.detach() + d, t, T, "ce") - L.soft_label_loss(s.detach() - d, t, T, "ce")) / (2 * eps)
    assert torch.allclose(s.grad, fd, atol=1e-8)


def test_hard_label_loss_classification_and_regression():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert L.hard_label_loss(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    assert L.hard_label_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 2.0])).item() == pytest.approx(1.0)


def test_mlm_loss_counts_masked_positions_only():
    logits = torch.zeros(1, 3, 2)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0)])  # p(token 1) = 3/4
    labels = torch.tensor([[-100, 1, -100]])
    assert L.mlm_loss(logits, labels).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    assert L.mlm_loss(logits, torch.full((1, 3), -100)).item() == 0.0


def test_mask_tokens_80_10_10_and_15_percent():
    g = torch.Generator().manual_seed(0)
    ids = torch.full((200, 100), 7)
    special = torch.zeros_like(ids)
    special[:, 0] = 1
    masked, labels = L.mask_tokens(ids, special, mask_token_id=3, vocab_size=50, probability=0.15, generator=g)
    chosen = labels != -100
    assert not chosen[:, 0].any()  # special tokens are never chosen
    assert chosen.float().mean().item() == pytest.approx(0.15 * 99 / 100, abs=0.01)
    frac_mask = (masked[chosen] == 3).float().mean().item()
    frac_kept = (masked[chosen] == 7).float().mean().item()
    assert frac_mask == pytest.approx(0.8, abs=0.03)
    assert frac_kept == pytest.approx(0.1, abs=0.03)  # random tokens hit 7 only 1/50 of the time
    assert (masked[~chosen] == ids[~chosen]).all()


def test_cosine_loss_skips_padding():
    h_s = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    h_t = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # token 1: cos 1 -> 0; token 2: cos 0 -> 1; token 3 is padding
    assert L.cosine_loss(h_s, h_t, mask).item() == pytest.approx(0.5)


def test_hidden_mse_masked_and_unmasked():
    h_s = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])
    h_t = torch.tensor([[[0.0, 0.0], [10.0, 10.0]]])
    mask = torch.tensor([[1, 0]])
    assert L.hidden_mse(h_s, h_t, mask).item() == pytest.approx((1 + 4) / 2)
    assert L.hidden_mse(h_s, h_t, None).item() == pytest.approx((1 + 4 + 100 + 100) / 4)


def test_attention_mse_ignores_padded_keys_and_queries():
    mask = torch.tensor([[1, 1, 0]])
    a_s = torch.zeros(1, 2, 3, 3)
    a_t = torch.zeros(1, 2, 3, 3)
    a_t[0, 0, 0, 0] = 2.0  # a real (query, key): counts
    a_t[0, 1, 1, 1] = 1.0  # counts
    a_t[..., 2] = 1000.0  # padded key: never counts
    a_t[0, :, 2, :2] = 7.0  # padded query, real keys: counts only without query masking
    # 2 heads x 2 real queries x 2 real keys = 8 entries
    assert L.attention_mse(a_s, a_t, mask).item() == pytest.approx((4 + 1) / 8)
    # + padded query row: 2 heads x 1 query x 2 keys of 49 each, over 12 entries
    assert L.attention_mse(a_s, a_t, mask, mask_queries=False).item() == pytest.approx((4 + 1 + 4 * 49) / 12)


def test_attention_mse_gradient_closed_form():
    torch.manual_seed(2)
    mask = torch.tensor([[1, 1, 1, 0]])
    a_s = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    a_t = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    L.attention_mse(a_s, a_t, mask).backward()
    valid = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    valid[..., :3, :3] = True
    expected = torch.where(valid, 2 * (a_s.detach() - a_t) / valid.sum(), torch.zeros_like(a_t))
    assert torch.allclose(a_s.grad, expected, atol=1e-12)


def test_projections_per_layer_shared_and_identity_init():
    p = L.Projections(4, 6, count=3)
    assert len(p.maps) == 3 and p.maps[0] is not p.maps[1]
    shared = L.Projections(4, 6, count=3, shared=True)
    assert len(shared.maps) == 1
    x = torch.randn(2, 4)
    assert torch.equal(shared(0, x), shared(2, x))
    same = L.Projections(4, 4, count=2)
    assert torch.allclose(same(1, x), x)
    with pytest.raises(IndexError):
        p(3, x)
