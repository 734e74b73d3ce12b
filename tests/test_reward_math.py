"""The soft Bradley-Terry loss, the held-out reward metrics and the preference-file reader (no model needed)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from cai.errors import UserInputError
from cai.stages.reward import preference_metrics, soft_bt_loss, split_pairs
from cai.train.common import load_preferences


def _t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def test_soft_loss_equals_hard_bradley_terry_when_label_is_certain():
    rc, rr = _t(1.5, -0.3, 0.2, 4.0), _t(0.5, 0.7, 0.2, -1.0)
    hard = -F.logsigmoid(rc - rr).mean()
    soft = soft_bt_loss(rc, rr, torch.ones(4))
    assert torch.allclose(soft, hard, atol=1e-6)
    # and it is not simply the hard loss for other labels
    assert not torch.allclose(soft_bt_loss(rc, rr, torch.full((4,), 0.7)), hard, atol=1e-3)


def test_soft_loss_is_symmetric_under_swapping_answers_and_label():
    rc, rr, p = _t(0.9, -2.0, 0.0), _t(-0.4, 1.0, 3.0), _t(0.8, 0.55, 1.0)
    a = soft_bt_loss(rc, rr, p, reduction="none")
    b = soft_bt_loss(rr, rc, 1 - p, reduction="none")
    assert torch.allclose(a, b, atol=1e-6)


def test_soft_loss_matches_its_formula():
    rc, rr, p = _t(0.3, -1.2), _t(-0.1, 0.4), _t(0.9, 0.6)
    d = rc - rr
    expected = -(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d)).mean()
    assert torch.allclose(soft_bt_loss(rc, rr, p), expected, atol=1e-6)


@pytest.mark.parametrize("p", [0.9, 0.6, 0.2])
def test_gradient_pushes_margin_toward_the_label(p):
    rc = torch.zeros(1, requires_grad=True)
    rr = torch.zeros(1, requires_grad=True)
    soft_bt_loss(rc, rr, _t(p)).backward()
    # dL/dd = sigmoid(d) - p = 0.5 - p: gradient descent raises r_chosen iff the label prefers chosen
    assert rc.grad.item() == pytest.approx(0.5 - p, abs=1e-6)
    assert rr.grad.item() == pytest.approx(p - 0.5, abs=1e-6)
    # a few gradient steps move sigmoid(d) from 0.5 to the label, not beyond it
    d = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([d], lr=2.0)
    for _ in range(300):
        opt.zero_grad()
        soft_bt_loss(d, torch.zeros(1), _t(p)).backward()
        opt.step()
    assert torch.sigmoid(d).item() == pytest.approx(p, abs=1e-3)


def test_confident_margin_is_pulled_back_for_an_uncertain_label():
    d = torch.tensor([3.0], requires_grad=True)
    soft_bt_loss(d, torch.zeros(1), _t(0.5)).backward()
    assert d.grad.item() > 0  # descent lowers an over-confident margin when the labeler was unsure
    d2 = torch.tensor([3.0], requires_grad=True)
    (-F.logsigmoid(d2)).sum().backward()
    assert d2.grad.item() < 0  # whereas the hard loss would keep pushing it up


def test_preference_metrics_accuracy_margin_and_ece_by_hand():
    rc = [2.0, 0.0, 1.0, -1.0]
    rr = [0.0, 0.0, 2.0, 1.0]
    p = [0.9, 0.5, 0.8, 0.7]
    m = preference_metrics(rc, rr, p, bins=5)
    assert m["n"] == 4
    assert m["accuracy"] == 0.25  # only the first pair has r_chosen > r_rejected (ties do not count)
    assert m["mean_margin"] == pytest.approx((2 + 0 - 1 - 2) / 4, abs=1e-4)
    q = [1 / (1 + math.exp(-d)) for d in (2.0, 0.0, -1.0, -2.0)]  # 0.881, 0.5, 0.269, 0.119
    # bins of width 0.2: [0,.2) holds q=0.119 (p .7), [.2,.4) q=.269 (p .8), [.4,.6) q=.5 (p .5), [.8,1] q=.881 (p .9)
    ece = (abs(q[3] - 0.7) + abs(q[2] - 0.8) + abs(q[1] - 0.5) + abs(q[0] - 0.9)) / 4
    assert m["ece"] == pytest.approx(ece, abs=1e-4)
    assert [b["n"] for b in m["bins"]] == [1, 1, 1, 0, 1]
    loss = -sum(pi * math.log(qi) + (1 - pi) * math.log(1 - qi) for pi, qi in zip(p, q)) / 4
    assert m["soft_bt_loss"] == pytest.approx(loss, abs=1e-4)


def test_perfectly_calibrated_rewards_have_zero_ece():
    p = [0.9, 0.6, 0.75]
    rc = [math.log(x / (1 - x)) for x in p]
    m = preference_metrics(rc, [0.0] * 3, p, bins=5)
    assert m["ece"] == pytest.approx(0.0, abs=1e-4)
    assert m["accuracy"] == 1.0


def test_split_is_seeded_disjoint_and_nonempty():
    pairs = [{"id": str(i)} for i in range(10)]
    tr, ev = split_pairs(pairs, 0.2, seed=3)
    assert len(ev) == 2 and len(tr) == 8
    assert not {p["id"] for p in tr} & {p["id"] for p in ev}
    assert split_pairs(pairs, 0.2, seed=3) == (tr, ev)
    assert split_pairs(pairs, 0.2, seed=4)[1] != ev or split_pairs(pairs, 0.2, seed=5)[1] != ev
    assert split_pairs(pairs[:3], 0.01, seed=0)[1]  # at least one held-out pair
    assert split_pairs(pairs, 0.0, seed=0) == (pairs, [])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _pair(i, **extra):
    return {"id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": "assistant", "content": f"Careful answer {i}."}],
            "rejected": [{"role": "assistant", "content": f"Sloppy answer {i}."}], **extra}


def test_load_preferences_reads_soft_labels_from_the_label_stage_field(tmp_path):
    f = _write(tmp_path / "pref.jsonl", [_pair(0, score_chosen=0.8, score_rejected=0.2), _pair(1, score_chosen=0.65)])
    pairs, info = load_preferences(f)
    assert info["label_field"] == "score_chosen"
    assert [x["p_chosen"] for x in pairs] == [0.8, 0.65]
    pairs, info = load_preferences(f, label_field="none")
    assert info["label_field"] is None and all(x["p_chosen"] == 1.0 for x in pairs)


def test_load_preferences_accepts_strings_and_drops_identical_pairs(tmp_path):
    rows = [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."},
            {"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."}]
    pairs, info = load_preferences(_write(tmp_path / "p.jsonl", rows))
    assert info["identical_dropped"] == 1 and len(pairs) == 1
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Hi?"}]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "Hello!"}]
    assert pairs[0]["p_chosen"] == 1.0


@pytest.mark.parametrize("bad", [1.7, -0.1, "very"])
def test_load_preferences_rejects_labels_that_are_not_probabilities(tmp_path, bad):
    f = _write(tmp_path / "p.jsonl", [_pair(0, p_chosen=0.9), _pair(1, p_chosen=bad)])
    with pytest.raises(UserInputError, match=r"p\.jsonl \(id p1\).*p_chosen"):
        load_preferences(f)


def test_load_preferences_names_a_missing_column(tmp_path):
    f = _write(tmp_path / "p.jsonl", [{"prompt": "x", "good": "a", "bad": "b"}])
    with pytest.raises(UserInputError, match="no column 'chosen'"):
        load_preferences(f)
    pairs, _ = load_preferences(f, column_map={"chosen": "good", "rejected": "bad"})
    assert pairs[0]["rejected"][0]["content"] == "b"
