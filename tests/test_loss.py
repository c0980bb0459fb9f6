"""Exact tests of timm_mimo.loss: w_r and the MIMO loss by hand (thesis eq. 3.3 / A.2, Alg. A.6; MixViT eq. 1)."""
import math

import pytest
import torch

from timm_mimo.loss import MimoLoss, mixing_loss_weights


def _pairs(kappa: float) -> torch.Tensor:
    return torch.tensor([[kappa, 1 - kappa]], dtype=torch.float64)


def _w(kappa: float, root: float) -> float:
    """eq. 3.3 for M = 2, by hand."""
    a, b = kappa ** (1 / root), (1 - kappa) ** (1 / root)
    return 2 * a / (a + b)


@pytest.mark.parametrize('root', [1.0, 2.0, 3.0, 10.0])
def test_weights_of_kappa_and_one_minus_kappa_sum_to_two(root):
    for kappa in (0.0, 0.1, 0.25, 0.5, 0.8, 0.99, 1.0):
        weights = mixing_loss_weights(_pairs(kappa), root)[0]
        assert float(weights[0]) == pytest.approx(_w(kappa, root), abs=1e-12)
        assert float(weights[1]) == pytest.approx(_w(1 - kappa, root), abs=1e-12)
        assert float(weights.sum()) == pytest.approx(2.0, abs=1e-12)


def test_root_one_is_two_kappa():
    kappas = torch.tensor([[0.0, 1.0], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3]], dtype=torch.float64)
    assert torch.allclose(mixing_loss_weights(kappas, root=1.0), 2 * kappas)


def test_root_infinity_is_one():
    kappas = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.01, 0.99]], dtype=torch.float64)
    assert torch.equal(mixing_loss_weights(kappas, root=math.inf), torch.ones(3, 2, dtype=torch.float64))
    # the limit: a large r approaches 1
    assert torch.allclose(mixing_loss_weights(kappas, root=1e6), torch.ones(3, 2, dtype=torch.float64), atol=1e-5)
    # r = 3 lies between r = 1 (2κ) and r = ∞ (1)
    weights = mixing_loss_weights(_pairs(0.2), root=3.0)[0, 0]
    assert 0.4 < float(weights) < 1.0


def test_m_general_weights_by_hand():
    kappas = torch.tensor([[0.5, 0.3, 0.2], [0.125, 0.125, 0.75]], dtype=torch.float64)
    # r = 1: M κ
    assert torch.allclose(mixing_loss_weights(kappas, root=1.0),
                          torch.tensor([[1.5, 0.9, 0.6], [0.375, 0.375, 2.25]], dtype=torch.float64))
    # r = 3, eq. A.1: w_m = M κ_m^{1/3} / Σ_j κ_j^{1/3}
    expected = []
    for row in ([0.5, 0.3, 0.2], [0.125, 0.125, 0.75]):
        roots = [k ** (1 / 3) for k in row]
        expected.append([3 * r / sum(roots) for r in roots])
    weights = mixing_loss_weights(kappas, root=3.0)
    assert torch.allclose(weights, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    # row 2 by hand: 0.125^{1/3} = 0.5, 0.75^{1/3} = 0.908560..., sum = 1.908560...
    assert float(weights[1, 0]) == pytest.approx(3 * 0.5 / (1 + 0.75 ** (1 / 3)), abs=1e-12)
    assert torch.allclose(weights.sum(dim=1), torch.full((2,), 3.0, dtype=torch.float64))
    # MixViT eq. 4.4: r = 1, weights summing to 1 are the ratios themselves
    assert torch.allclose(mixing_loss_weights(kappas, root=1.0, weight_sum=1.0), kappas)
    # an absent member (κ = 0, MixViT pair_only) weighs nothing for every r
    for root in (1.0, 3.0, math.inf):
        assert float(mixing_loss_weights(torch.tensor([[0.4, 0.0, 0.6]]), root=root)[0, 1]) == 0.0


def _log_softmax(row):
    total = sum(math.exp(v) for v in row)
    return [v - math.log(total) for v in row]


LOGITS = [  # (B=2, M=2, K=3)
    [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]],
    [[0.0, 1.0, 3.0], [-1.0, 2.0, 0.0]],
]
KAPPAS = [[0.25, 0.75], [0.5, 0.5]]


def test_mimo_loss_hard_targets_by_hand():
    targets = [[0, 2], [2, 1]]
    loss = MimoLoss(root=1.0)(torch.tensor(LOGITS), torch.tensor(targets), torch.tensor(KAPPAS))
    expected = 0.0
    for b in range(2):
        for m in range(2):
            ce = -_log_softmax(LOGITS[b][m])[targets[b][m]]
            expected += 2 * KAPPAS[b][m] * ce  # r = 1: w = 2κ
    assert float(loss) == pytest.approx(expected / 2, rel=1e-6)


def test_mimo_loss_soft_targets_by_hand():
    soft = [
        [[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]],
        [[0.2, 0.2, 0.6], [0.5, 0.5, 0.0]],
    ]
    loss = MimoLoss(root=3.0)(torch.tensor(LOGITS), torch.tensor(soft), torch.tensor(KAPPAS))
    expected = 0.0
    for b in range(2):
        for m in range(2):
            log_probs = _log_softmax(LOGITS[b][m])
            ce = -sum(t * lp for t, lp in zip(soft[b][m], log_probs))
            expected += _w(KAPPAS[b][m], 3.0) * ce
    assert float(loss) == pytest.approx(expected / 2, rel=1e-6)
    # one-hot soft targets equal hard targets
    hard = torch.tensor([[0, 2], [2, 1]])
    one_hot = torch.nn.functional.one_hot(hard, 3).float()
    criterion = MimoLoss(root=3.0)
    assert torch.allclose(criterion(torch.tensor(LOGITS), one_hot, torch.tensor(KAPPAS)),
                          criterion(torch.tensor(LOGITS), hard, torch.tensor(KAPPAS)))


def test_mimo_loss_mixvit_weight_sum_one():
    targets = [[1, 0], [0, 2]]
    loss = MimoLoss(root=1.0, weight_sum=1.0)(torch.tensor(LOGITS), torch.tensor(targets), torch.tensor(KAPPAS))
    expected = 0.0
    for b in range(2):
        # eq. 4.4: λ CE_0 + (1 − λ) CE_1
        expected += sum(KAPPAS[b][m] * -_log_softmax(LOGITS[b][m])[targets[b][m]] for m in range(2))
    assert float(loss) == pytest.approx(expected / 2, rel=1e-6)


def test_mimo_loss_label_smoothing_by_hand():
    targets = [[0, 2], [2, 1]]
    smoothing = 0.1
    loss = MimoLoss(root=math.inf, label_smoothing=smoothing)(
        torch.tensor(LOGITS), torch.tensor(targets), torch.tensor(KAPPAS))
    expected = 0.0
    for b in range(2):
        for m in range(2):
            log_probs = _log_softmax(LOGITS[b][m])
            smoothed = [(1 - smoothing) * (k == targets[b][m]) + smoothing / 3 for k in range(3)]
            expected += -sum(t * lp for t, lp in zip(smoothed, log_probs))  # r = ∞: w = 1
    assert float(loss) == pytest.approx(expected / 2, rel=1e-6)


def test_mimo_loss_m3_by_hand():
    logits = [[[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]]]
    kappas = [[0.5, 0.3, 0.2]]
    targets = [[0, 0, 1]]
    loss = MimoLoss(root=1.0)(torch.tensor(logits), torch.tensor(targets), torch.tensor(kappas))
    expected = sum(3 * kappas[0][m] * -_log_softmax(logits[0][m])[targets[0][m]] for m in range(3))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_shape_errors():
    criterion = MimoLoss()
    logits = torch.zeros(2, 2, 3)
    kappas = torch.full((2, 2), 0.5)
    with pytest.raises(ValueError, match=r'\(B, M, K\)'):
        criterion(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), kappas)
    with pytest.raises(ValueError, match=r'kappas of shape \(B, M\) = \(2, 2\)'):
        criterion(logits, torch.zeros(2, 2, dtype=torch.long), torch.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match='targets'):
        criterion(logits, torch.zeros(2, dtype=torch.long), kappas)
    with pytest.raises(ValueError, match='targets'):
        criterion(logits, torch.zeros(2, 2, 4), kappas)
    with pytest.raises(ValueError, match='kappas'):
        mixing_loss_weights(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match='non-negative'):
        mixing_loss_weights(torch.tensor([[1.5, -0.5]]))
    with pytest.raises(ValueError, match='root'):
        MimoLoss(root=0.0)


def test_float_hard_targets_and_all_zero_kappas_are_refused():
    logits = torch.zeros(2, 2, 3)
    with pytest.raises(ValueError, match='integer dtype'):
        MimoLoss()(logits, torch.zeros(2, 2), torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match='positive mixing ratio'):
        mixing_loss_weights(torch.tensor([[0.5, 0.5], [0.0, 0.0]]), root=3.0)
