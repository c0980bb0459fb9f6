"""Metrics against hand-computed values, and the torchmetrics-backed ones against hand-written references."""
import itertools
import math

import pytest
import torch

from timm_mimo.metrics import (
    aurc,
    brier_score,
    calibrated_nll,
    disagreement,
    ensemble_metrics,
    expected_calibration_error,
    fit_temperature,
    nll,
    ood_detection,
    ood_metrics,
    ratio_error_diversity,
    split_halves,
    topk_accuracy,
    uncertainty_scores,
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
    assert expected_calibration_error(probs, targets) == pytest.approx(expected, abs=1e-5)  # torchmetrics: float32


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
    assert set(out) == {'top1', 'top5', 'loss', 'nll_c', 'temperature_a', 'temperature_b', 'ece', 'brier', 'aurc'}


def _guo_ece(probs: torch.Tensor, targets: torch.Tensor, num_bins: int = 15) -> float:
    """Hand-written reference: Guo et al.'s bins (i/n, (i+1)/n], in %."""
    confidence, prediction = probs.max(dim=-1)
    total = 0.0
    for i in range(num_bins):
        in_bin = (confidence > i / num_bins) & (confidence <= (i + 1) / num_bins)
        if in_bin.any():
            accuracy = (prediction[in_bin] == targets[in_bin]).double().mean()
            total += in_bin.double().mean().item() * abs(accuracy.item() - confidence[in_bin].mean().item())
    return 100.0 * total


def test_torchmetrics_ece_matches_hand_written_guo_binning():
    generator = torch.Generator().manual_seed(0)
    probs = (3 * torch.randn(500, 7, generator=generator, dtype=torch.float64)).softmax(dim=-1)
    targets = torch.randint(0, 7, (500,), generator=generator)
    assert expected_calibration_error(probs, targets) == pytest.approx(_guo_ece(probs, targets), abs=1e-4)


def test_topk_accuracy_matches_torchmetrics():
    from torchmetrics.functional.classification import multiclass_accuracy
    generator = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(300, 10, generator=generator), torch.randint(0, 10, (300,), generator=generator)
    for k in (1, 5):
        reference = multiclass_accuracy(logits, targets, num_classes=10, top_k=k, average='micro').item()
        assert topk_accuracy(logits, targets, k) == pytest.approx(100 * reference, abs=1e-4)


def test_ece_of_perfect_and_uniform_predictors():
    targets = torch.tensor([0, 1, 2, 1])
    assert expected_calibration_error(torch.eye(3)[targets], targets) == pytest.approx(0.0, abs=1e-5)
    # uniform over 4 classes: confidence 1/4 everywhere, accuracy 1/4 (argmax = class 0, one target in four is 0)
    uniform = torch.full((4, 4), 0.25)
    assert expected_calibration_error(uniform, torch.tensor([0, 1, 2, 3])) == pytest.approx(0.0, abs=1e-5)
    assert expected_calibration_error(uniform, torch.tensor([1, 1, 2, 3])) == pytest.approx(25.0, abs=1e-5)


def test_brier_score_hand_computed_perfect_and_uniform():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]], dtype=torch.float64)
    # (0.3² + 0.2² + 0.1²) = 0.14 and (0.5² + 0.5²) = 0.5
    assert brier_score(probs, torch.tensor([0, 1])) == pytest.approx(0.32, abs=1e-12)
    targets = torch.tensor([2, 0, 1])
    assert brier_score(torch.eye(3)[targets], targets) == 0.0
    assert brier_score(torch.eye(3)[(targets + 1) % 3], targets) == pytest.approx(2.0)  # confidently wrong
    assert brier_score(torch.full((3, 4), 0.25), torch.tensor([0, 1, 3])) == pytest.approx(0.75)  # 1 - 1/K


def test_aurc_hand_computed():
    confidence = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # accepted in that order: risks 0/1, 1/2, 1/3, 2/4
    assert aurc(confidence, torch.tensor([True, False, True, False])) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    assert aurc(confidence, torch.ones(4, dtype=torch.bool)) == 0.0  # perfect predictor
    assert aurc(confidence, torch.zeros(4, dtype=torch.bool)) == 1.0  # always wrong
    # a perfect confidence ranking (wrong ones least confident) beats the reverse ranking
    correct = torch.tensor([True, True, False, False])
    assert aurc(confidence, correct) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)
    assert aurc(confidence, correct.flip(0)) == pytest.approx((1 + 1 + 2 / 3 + 2 / 4) / 4)


def test_aurc_of_random_confidence_is_the_error_rate_on_average():
    correct = torch.tensor([True, False, True, True, False])
    values = [aurc(torch.tensor(order, dtype=torch.float64), correct) for order in itertools.permutations(range(5))]
    assert sum(values) / len(values) == pytest.approx(2 / 5)


def test_ood_detection_hand_computed():
    in_scores, out_scores = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0.9, 0.5, 0.3])
    auroc, aupr, fpr95 = ood_detection(in_scores, out_scores)
    assert auroc == pytest.approx(100 * 8 / 12, abs=1e-4)  # 8 of the 12 (out, in) pairs ranked right
    # ranked: O I O I I O I -> precision at each OOD sample 1/1, 2/3, 3/6
    assert aupr == pytest.approx(100 * (1 + 2 / 3 + 1 / 2) / 3, abs=1e-4)
    assert fpr95 == pytest.approx(75.0, abs=1e-4)  # catching all 3 OOD flags 0.8, 0.4, 0.35


def test_ood_detection_perfect_reversed_and_random():
    in_scores, out_scores = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([5.0, 6.0])
    assert ood_detection(in_scores, out_scores) == pytest.approx((100.0, 100.0, 0.0), abs=1e-4)
    auroc, _, fpr95 = ood_detection(out_scores, in_scores)
    assert auroc == pytest.approx(0.0, abs=1e-4) and fpr95 == pytest.approx(100.0, abs=1e-4)
    auroc, aupr, fpr95 = ood_detection(torch.ones(4), torch.ones(4))  # uninformative score
    assert auroc == pytest.approx(50.0) and aupr == pytest.approx(50.0) and fpr95 == pytest.approx(100.0)
    with pytest.raises(ValueError, match='0 out-of-distribution'):
        ood_detection(in_scores, torch.tensor([]))


def test_ood_detection_matches_sklearn():
    from sklearn.metrics import average_precision_score, roc_auc_score
    generator = torch.Generator().manual_seed(2)
    # large scores on purpose: torchmetrics would apply a sigmoid to them and saturate into ties
    in_scores = 30 + torch.randn(200, generator=generator, dtype=torch.float64)
    out_scores = 31 + torch.randn(150, generator=generator, dtype=torch.float64)
    labels = [0] * 200 + [1] * 150
    scores = torch.cat([in_scores, out_scores]).numpy()
    auroc, aupr, _ = ood_detection(in_scores, out_scores)
    assert auroc == pytest.approx(100 * roc_auc_score(labels, scores), abs=1e-4)
    assert aupr == pytest.approx(100 * average_precision_score(labels, scores), abs=1e-4)


def test_uncertainty_scores_hand_computed():
    log3 = math.log(3.0)
    member_logits = torch.tensor([[[log3, 0.0], [0.0, log3]]])  # members 3:1 and 1:3
    scores = uncertainty_scores(member_logits)
    member_entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert scores['msp'].item() == pytest.approx(-0.5)  # mean logits (log3/2, log3/2): uniform
    assert scores['entropy'].item() == pytest.approx(math.log(2))
    assert scores['mutual_info'].item() == pytest.approx(math.log(2) - member_entropy)
    agreeing = uncertainty_scores(torch.tensor([[[log3, 0.0], [log3, 0.0]]]))
    assert agreeing['mutual_info'].item() == pytest.approx(0.0, abs=1e-12)
    assert set(uncertainty_scores(torch.randn(3, 1, 4))) == {'msp', 'entropy'}  # no MI for a single model


def test_ood_metrics_columns_and_separation():
    generator = torch.Generator().manual_seed(3)
    confident = torch.zeros(50, 2, 5)
    confident[:, :, 0] = 8.0  # both members sure of class 0
    confused = torch.randn(40, 2, 5, generator=generator)  # members disagree, flat softmax
    out = ood_metrics(confident, confused)
    assert list(out) == [f'ood_{s}_{m}' for s in ('msp', 'entropy', 'mutual_info') for m in ('auroc', 'aupr', 'fpr95')]
    assert out['ood_msp_auroc'] == pytest.approx(100.0) and out['ood_entropy_fpr95'] == pytest.approx(0.0)
