"""The checkpoint rule: the last state unless an earlier one leads on the validation rows by more than their noise."""

import numpy as np
import pytest
import torch

from kdistill.distill.objectives import Supervised
from kdistill.train.selection import choose, paired_bootstrap
from kdistill.train.trainer import Trainer, TrainerConfig

from .test_trainer import _tiny_task


def accuracy(a, g):
    return float(np.mean(a == g))


def right_on(gold, start, count):
    """Predictions right on rows start..start+count-1 and wrong elsewhere."""
    rows = np.arange(len(gold))
    return np.where((rows >= start) & (rows < start + count), gold, 1 - gold)


def test_the_paired_bootstrap_error_of_an_accuracy_difference_is_the_binomial_one():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 1000)
    a = np.where(rng.random(1000) < 0.85, gold, 1 - gold)
    b = np.where(rng.random(1000) < 0.10, 1 - a, a)  # b disagrees with a on about 10% of the rows
    lead, se = paired_bootstrap(accuracy, gold)(a, b)
    d = (a == gold).astype(float) - (b == gold).astype(float)
    assert lead == pytest.approx(d.mean())
    assert se == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), rel=0.1)  # the paired SE, not the unpaired one
    assert se < 0.7 * np.sqrt(2 * 0.85 * 0.15 / 1000)  # the unpaired error of two 85% accuracies


def test_each_rule_decides_as_documented():
    gold = np.array([1, 0] * 500)
    # near: one point ahead, but right and wrong on different rows (210 disagreements): within the noise;
    # far: ten points ahead, right on every row the last state gets right
    last = {"step": 30, "value": 0.80, "predictions": right_on(gold, 0, 800)}
    near = {"step": 10, "value": 0.81, "predictions": right_on(gold, 100, 810)}
    far = {"step": 10, "value": 0.90, "predictions": right_on(gold, 0, 900)}
    compare = paired_bootstrap(accuracy, gold)
    back, rec = choose("last_unless_significant", near, last, compare)
    assert not back and rec["kept_step"] == 30 and rec["lead"] == pytest.approx(0.01) and rec["lead"] < 2 * rec["lead_se"]
    back, rec = choose("last_unless_significant", far, last, compare)
    assert back and rec["kept_step"] == 10 and rec["lead"] > 2 * rec["lead_se"]
    assert choose("best", near, last)[0] and not choose("last", far, last)[0]
    assert not choose("last_unless_significant", last, last, compare)[0]  # the last state is the best: nothing to test
    with pytest.raises(ValueError, match="needs a paired comparison"):
        choose("last_unless_significant", far, last)


@pytest.mark.parametrize("first, goes_back", [((100, 610), False), ((0, 900), True)])
def test_the_trainer_keeps_the_last_state_unless_an_earlier_one_leads_beyond_noise(make_bert, tmp_path, first, goes_back):
    """Scripted validation scores at steps 2, 4 and 6 on 1000 rows: the first state leads the last (60%) by one
    point on other rows (noise), or by thirty points on the same rows."""
    model = make_bert("seq")
    gold = np.array([0, 1] * 500)
    right = {2: first, 4: (0, 550), 6: (0, 600)}
    states = {}

    def eval_fn(obj):
        step = 2 * (len(states) + 1)
        states[step] = {k: v.clone() for k, v in obj.student.state_dict().items()}
        pred = right_on(gold, *right[step])
        return {"accuracy": accuracy(pred, gold)}, pred

    cfg = TrainerConfig(lr=1e-3, batch_size=4, max_steps=6, eval_every=2, checkpoint_every=100, warmup_ratio=0.0)
    res = Trainer(Supervised(model), _tiny_task(24), cfg, tmp_path / "c", eval_fn=eval_fn, select_metric="accuracy",
                  select_rule="last_unless_significant", compare=paired_bootstrap(accuracy, gold),
                  device=torch.device("cpu")).train()
    kept = 2 if goes_back else 6
    assert res.best_step == kept and res.selection["kept_step"] == kept and res.selection["best_step"] == 2
    assert res.best_metric == pytest.approx(right[kept][1] / 1000)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, states[kept][k])
