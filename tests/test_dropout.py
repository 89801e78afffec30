"""The CPU dropout the trainer installs: same distribution and scaling as nn.Dropout, repeatable, a no-op in eval."""

import torch
from torch import nn

from kdistill.train.dropout import FastDropout, fast_dropout, install_fast_dropout


def test_keep_rate_and_scale_match_dropout():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    for p in (0.1, 0.5):
        y = fast_dropout(x, p)
        kept = y != 0
        # 400k Bernoulli draws: the keep rate's standard error is under 0.0008
        assert abs(kept.float().mean().item() - (1 - p)) < 0.004
        assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert fast_dropout(x, 0.0) is x and fast_dropout(x, 0.3, training=False) is x


def test_same_seed_same_mask_and_gradient_flows_through_kept_units():
    x = torch.randn(4, 7, 5, requires_grad=True)
    torch.manual_seed(3)
    a = fast_dropout(x, 0.2)
    torch.manual_seed(3)
    b = fast_dropout(x, 0.2)
    assert torch.equal(a, b)
    a.sum().backward()
    assert torch.allclose(x.grad, (a != 0).float() / 0.8)


def test_install_swaps_plain_dropout_only_and_keeps_the_state_dict():
    class Custom(nn.Dropout):
        pass

    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1), Custom(0.2), nn.Sequential(nn.Dropout(0.3)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert install_fast_dropout(model) == 2
    assert isinstance(model[1], FastDropout) and model[1].p == 0.1
    assert type(model[2]) is Custom
    assert isinstance(model[3][0], FastDropout) and model[3][0].p == 0.3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    x = torch.randn(2, 3)
    assert torch.equal(model(x), model[0](x))
