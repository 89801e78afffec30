"""Which evaluated state a training phase keeps (`base.checkpoint_rule`).

`best` keeps the state that scored highest on the validation rows. With a thousand rows, states a few tenths of a
point apart are not told apart by that score: the highest is often an early state that leads by noise, and dev then
pays for it. `last_unless_significant` keeps the last state unless the best earlier one leads it by more than
`z` standard errors of the difference, measured on the same rows (a paired bootstrap of the primary metric, so it
holds for accuracy, F1, Matthews and Pearson alike). `last` never goes back.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np

Rule = Literal["last_unless_significant", "best", "last"]
RULES: tuple[str, ...] = ("last_unless_significant", "best", "last")


def paired_bootstrap(metric: Callable[[np.ndarray, np.ndarray], float], gold, draws: int = 1000, seed: int = 0):
    """compare(a, b) -> (metric(a) - metric(b), its standard error): both states' predictions on the same rows,
    resampled together `draws` times (the pairing removes what the rows' difficulty shares between them)."""
    gold = np.asarray(gold)

    def compare(a, b) -> tuple[float, float]:
        a, b = np.asarray(a), np.asarray(b)
        lead = metric(a, gold) - metric(b, gold)
        rng = np.random.default_rng(seed)
        n = len(gold)
        diffs = np.empty(draws)
        for d in range(draws):
            i = rng.integers(0, n, n)
            diffs[d] = metric(a[i], gold[i]) - metric(b[i], gold[i])
        return float(lead), float(diffs.std(ddof=1))

    return compare


def choose(rule: str, best: dict, last: dict, compare=None, z: float = 2.0) -> tuple[bool, dict]:
    """(go back to `best`?, the record of the decision). `best` and `last` hold the step, the primary metric's value
    and the per-row predictions of the highest-scoring and of the final evaluation."""
    record = {"rule": rule, "best_step": best.get("step"), "best_value": best.get("value"),
              "last_step": last.get("step"), "last_value": last.get("value")}
    if best.get("step") is None or best["step"] == last.get("step") or rule == "last":
        return False, {**record, "kept_step": last.get("step")}
    if rule == "best":
        return True, {**record, "kept_step": best["step"]}
    if compare is None or best.get("predictions") is None or last.get("predictions") is None:
        raise ValueError("last_unless_significant needs a paired comparison and both states' predictions")
    lead, se = compare(best["predictions"], last["predictions"])
    back = lead > z * se
    return back, {**record, "lead": lead, "lead_se": se, "z": z, "kept_step": best["step"] if back else last["step"]}
