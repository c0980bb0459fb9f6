"""Metrics against hand-computed values (SPEC §5)."""
import math

import pytest
import torch

from timm_mimo.metrics import (
    calibrated_nll,
    disagreement,
    ensemble_metrics,
    expected_calibration_error,
    fit_temperature,
    nll,
    ratio_error_diversity,
    split_halves,
    topk_accuracy,
)


def test_topk_accuracy_counts_rank_of_target():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    targets = torch.tensor([1, 1, 1])
    assert topk_accuracy(logits, targets, 1) == pytest.approx(100.0 / 3)
    assert topk_accuracy(logits, targets, 2) == pytest.approx(100.0)
    assert topk_accuracy(logits, torch.tensor([2, 0, 0]), 2) == 0.0
    assert topk_accuracy(logits, targets, 5) == 100.0  # k capped at K


def test_nll_is_mean_negative_log_softmax():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]], dtype=torch.float64)  # p(class 0) = 3/4, then 1/2
    assert nll(logits, torch.tensor([0, 1])) == pytest.approx(-(math.log(0.75) + math.log(0.5)) / 2, abs=1e-12)
    assert nll(logits, torch.tensor([0, 1]), temperature=2.0) == pytest.approx(
        -(math.log(math.sqrt(3) / (math.sqrt(3) + 1)) + math.log(0.5)) / 2, abs=1e-12)


def _binary_set(correct: int, wrong: int):
    """Logits (1, 0) with ``correct`` rows of target 0 and ``wrong`` rows of target 1: optimal 1/T = log(c/w)."""
    logits = torch.tensor([[1.0, 0.0]] * (correct + wrong))
    return logits, torch.tensor([0] * correct + [1] * wrong)


def test_fit_temperature_closed_form():
    logits, targets = _binary_set(3, 1)  # σ(β) = 3/4 at the optimum -> β = log 3
    assert fit_temperature(logits, targets) == pytest.approx(1.0 / math.log(3.0), rel=1e-5)


def test_calibrated_nll_two_half_cross_protocol():
    logits_a, targets_a = _binary_set(2, 1)  # T_A = 1 / log 2
    logits_b, targets_b = _binary_set(3, 1)  # T_B = 1 / log 3
    logits, targets = torch.cat([logits_a, logits_b]), torch.cat([targets_a, targets_b])
    halves = (torch.arange(0, 3), torch.arange(3, 7))
    value, temp_a, temp_b = calibrated_nll(logits, targets, halves)
    assert temp_a == pytest.approx(1 / math.log(2), rel=1e-5)
    assert temp_b == pytest.approx(1 / math.log(3), rel=1e-5)
    # half A scored with T_B (p = 3/4), half B with T_A (p = 2/3)
    expected = (2 * -math.log(3 / 4) + -math.log(1 / 4) + 3 * -math.log(2 / 3) + -math.log(1 / 3)) / 7
    assert value == pytest.approx(expected, rel=1e-6)


def test_split_halves_is_a_fixed_partition():
    half_a, half_b = split_halves(11)
    assert len(half_a) == 5 and len(half_b) == 6
    assert sorted(torch.cat([half_a, half_b]).tolist()) == list(range(11))
    assert torch.equal(split_halves(11)[0], half_a)


def test_expected_calibration_error_15_bins():
    probs = torch.tensor([[0.9, 0.1], [0.75, 0.25], [0.62, 0.38], [0.64, 0.36]], dtype=torch.float64)
    targets = torch.tensor([0, 0, 1, 0])
    # bins (13/15, 14/15]: acc 1 conf .9; (11/15, 12/15]: acc 1 conf .75; (9/15, 10/15]: acc 1/2 conf .63
    expected = 100 * (0.25 * 0.1 + 0.25 * 0.25 + 0.5 * abs(0.5 - 0.63))
    assert expected_calibration_error(probs, targets) == pytest.approx(expected, abs=1e-9)


def test_ratio_error_diversity_and_disagreement():
    targets = torch.zeros(5, dtype=torch.long)
    predictions = torch.tensor([[0, 0, 1], [1, 2, 1], [2, 0, 0], [0, 1, 0], [0, 0, 3]])
    # pairs (0,1): 2 single errors / 1 joint; (0,2): 3 / 1; (1,2): 3 / 1
    assert ratio_error_diversity(predictions, targets) == pytest.approx(8 / 3)
    assert disagreement(predictions) == pytest.approx((3 / 5 + 3 / 5 + 4 / 5) / 3)


def test_ratio_error_without_joint_errors_uses_twice_the_single_errors():
    targets = torch.zeros(4, dtype=torch.long)
    predictions = torch.tensor([[0, 0], [1, 0], [0, 2], [0, 1]])
    assert ratio_error_diversity(predictions, targets) == pytest.approx(6.0)


def test_ensemble_metrics_average_logits_and_report_probability_averaging():
    member_logits = torch.tensor([[[4.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 2.0]]])
    targets = torch.tensor([0, 0])
    out = ensemble_metrics(member_logits, targets)
    # ensemble logits: (2, 0.5) -> right, (0, 2) -> wrong
    assert out['top1'] == 50.0 and out['top1_m0'] == 50.0 and out['top1_m1'] == 0.0
    assert out['member_top1'] == 25.0
    expected_loss = (math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(2.0))) / 2
    assert out['loss'] == pytest.approx(expected_loss, abs=1e-12)
    p0 = (1 / (1 + math.exp(-4)) + 1 / (1 + math.exp(1))) / 2
    p1 = 1 / (1 + math.exp(2))
    assert out['nll_prob'] == pytest.approx(-(math.log(p0) + math.log(p1)) / 2, abs=1e-12)
    assert out['disagreement'] == 0.5
    assert out['d_re'] == pytest.approx(1.0)  # one single error, one joint error


def test_plain_model_gets_ensemble_columns_only():
    out = ensemble_metrics(torch.randn(10, 1, 3), torch.randint(0, 3, (10,)))
    assert set(out) == {'top1', 'top5', 'loss', 'nll_c', 'temperature_a', 'temperature_b', 'ece'}
