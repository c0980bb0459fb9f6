"""Evaluation metrics of MIMO ensembles (SPEC §5): accuracy, NLL, calibrated NLL, ECE, diversity.

Everything starts from member logits ``(N, M, K)`` and targets ``(N,)``; a plain timm model is the case M = 1.
The ensemble averages LOGITS (SPEC §0, DESIGN.md); probability averaging is reported in ``*_prob`` columns.
"""
import itertools
import math
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    'topk_accuracy', 'nll', 'fit_temperature', 'split_halves', 'calibrated_nll', 'expected_calibration_error',
    'ratio_error_diversity', 'disagreement', 'ensemble_metrics', 'is_mimo', 'collect_member_logits',
]

ECE_BINS = 15
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Percentage of rows whose target is among the ``k`` largest logits (``k`` capped at the class count)."""
    k = min(k, logits.shape[-1])
    hits = (logits.topk(k, dim=-1).indices == targets[:, None]).any(dim=-1)
    return 100.0 * hits.double().mean().item()


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)``."""
    return F.cross_entropy(logits.double() / temperature, targets).item()


def _log_prob_nll(log_probs: torch.Tensor, targets: torch.Tensor) -> float:
    return -log_probs.gather(1, targets[:, None]).mean().item()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, tol: float = 1e-6) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` (Guo et al.; SPEC §5).

    Decision [AMBIG optimiser]: golden-section search on ``log(1/T) ∈ [log 1e-3, log 1e3]``. The NLL is convex in
    ``β = 1/T`` (log-sum-exp minus a linear term), so it is unimodal in ``log β`` and the search cannot get stuck;
    unlike LBFGS it needs no learning-rate grid.
    """
    logits = logits.double()

    def loss(log_beta: float) -> float:
        return F.cross_entropy(logits * math.exp(log_beta), targets).item()

    low, high = math.log(1e-3), math.log(1e3)
    a, b = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
    fa, fb = loss(a), loss(b)
    while high - low > tol:
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - GOLDEN * (high - low)
            fa = loss(a)
        else:
            low, a, fa = a, b, fb
            b = low + GOLDEN * (high - low)
            fb = loss(b)
    return math.exp(-(low + high) / 2.0)


def split_halves(num_samples: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two halves of the NLL_c protocol.

    Decision [AMBIG split rule, SPEC §5]: a random permutation from a fixed seed (0), first ``⌊N/2⌋`` indices = half A.
    Not first/second half by position: folder datasets list images class by class, which would calibrate on other
    classes than it evaluates.
    """
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return order[:num_samples // 2], order[num_samples // 2:]


def calibrated_nll(logits: torch.Tensor, targets: torch.Tensor,
                   halves: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Tuple[float, float, float]:
    """NLL_c with the two-half cross protocol (SPEC §5).

    ``T_A`` is fit on half A and applied to half B, ``T_B`` fit on B and applied to A;
    ``NLL_c = mean over all N samples of NLL(A; T_B) ∪ NLL(B; T_A)``.

    Returns:
        ``(nll_c, T_A, T_B)``.
    """
    half_a, half_b = halves if halves is not None else split_halves(logits.shape[0])
    temp_a = fit_temperature(logits[half_a], targets[half_a])
    temp_b = fit_temperature(logits[half_b], targets[half_b])
    loss_a = F.cross_entropy(logits[half_a].double() / temp_b, targets[half_a], reduction='sum')
    loss_b = F.cross_entropy(logits[half_b].double() / temp_a, targets[half_b], reduction='sum')
    return ((loss_a + loss_b) / (half_a.numel() + half_b.numel())).item(), temp_a, temp_b


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, num_bins: int = ECE_BINS) -> float:
    """ECE in % with equal-width confidence bins ``(i/n, (i+1)/n]`` (Guo et al.; SPEC §5: 15 bins).

    ``ECE = Σ_bins |bin| / N · |accuracy(bin) − mean confidence(bin)|``.
    """
    confidence, prediction = probs.double().max(dim=-1)
    correct = (prediction == targets).double()
    bins = (confidence * num_bins).ceil().long().clamp(1, num_bins) - 1  # (lo, hi] bins; confidence 0 goes to bin 0
    conf_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, confidence)
    acc_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, correct)
    return 100.0 * ((acc_sum - conf_sum).abs().sum() / confidence.numel()).item()


def _member_pairs(num_members: int) -> Sequence[Tuple[int, int]]:
    return list(itertools.combinations(range(num_members), 2))


def ratio_error_diversity(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """d_re: mean over member pairs of ``(N01 + N10) / N00`` (Aksela 2003; SPEC §5).

    N01 / N10: exactly one member of the pair is wrong; N00: both are wrong (even with different classes).
    [NON-PAPER] rule kept: when N00 = 0 the ratio is ``2 (N01 + N10)``.

    Args:
        predictions: ``(N, M)`` predicted classes.
        targets: ``(N,)``.
    """
    wrong = predictions != targets[:, None]
    ratios = []
    for first, second in _member_pairs(predictions.shape[1]):
        both = (wrong[:, first] & wrong[:, second]).sum().item()
        one = (wrong[:, first] ^ wrong[:, second]).sum().item()
        ratios.append(one / both if both > 0 else 2.0 * one)
    return sum(ratios) / len(ratios)


def disagreement(predictions: torch.Tensor) -> float:
    """Mean over member pairs of the fraction of samples on which the two members predict different classes."""
    rates = [(predictions[:, a] != predictions[:, b]).double().mean().item()
             for a, b in _member_pairs(predictions.shape[1])]
    return sum(rates) / len(rates)


def ensemble_metrics(member_logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
    """Every SPEC §5 metric of one evaluation, with timm's column names where they exist.

    Args:
        member_logits: ``(N, M, K)``; M = 1 for a plain model (ensemble columns only).
        targets: ``(N,)``.

    Returns:
        Ordered dict: ``top1, top5, loss`` (loss = NLL of the ensemble), ``nll_c, temperature_a, temperature_b,
        ece`` and, for M > 1, ``top1_prob, top5_prob, nll_prob`` (probability averaging), ``member_top1``
        (mean over members), ``top1_m<i>, top5_m<i>, nll_m<i>`` per member, ``d_re`` and ``disagreement``.
    """
    member_logits, targets = member_logits.double(), targets.long()
    num_members = member_logits.shape[1]
    logits = member_logits.mean(dim=1)  # SPEC §0: the ensemble averages logits
    nll_c, temp_a, temp_b = calibrated_nll(logits, targets)
    out = OrderedDict(
        top1=topk_accuracy(logits, targets, 1), top5=topk_accuracy(logits, targets, 5), loss=nll(logits, targets),
        nll_c=nll_c, temperature_a=temp_a, temperature_b=temp_b,
        ece=expected_calibration_error(logits.softmax(dim=-1), targets))
    if num_members == 1:
        return out
    mean_probs = member_logits.softmax(dim=-1).mean(dim=1)
    out['top1_prob'] = topk_accuracy(mean_probs, targets, 1)
    out['top5_prob'] = topk_accuracy(mean_probs, targets, 5)
    out['nll_prob'] = _log_prob_nll(mean_probs.clamp_min(1e-300).log(), targets)
    member_top1 = [topk_accuracy(member_logits[:, m], targets, 1) for m in range(num_members)]
    out['member_top1'] = sum(member_top1) / num_members
    for m in range(num_members):
        out[f'top1_m{m}'] = member_top1[m]
        out[f'top5_m{m}'] = topk_accuracy(member_logits[:, m], targets, 5)
        out[f'nll_m{m}'] = nll(member_logits[:, m], targets)
    predictions = member_logits.argmax(dim=-1)
    out['d_re'] = ratio_error_diversity(predictions, targets)
    out['disagreement'] = disagreement(predictions)
    return out


def is_mimo(model: torch.nn.Module) -> bool:
    """A model is MIMO iff it has ``num_members`` and ``forward_members`` (DESIGN.md contract)."""
    return hasattr(model, 'num_members') and callable(getattr(model, 'forward_members', None))


@torch.no_grad()
def collect_member_logits(model: torch.nn.Module, loader, device: torch.device,
                          autocast_dtype: Optional[torch.dtype] = None,
                          channels_last: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``loader``: member logits ``(N, M, K)`` (M = 1 for a plain model) and targets ``(N,)``."""
    model.eval()
    mimo = is_mimo(model)
    all_logits, all_targets = [], []
    for images, targets in loader:
        images = images.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model.forward_members(images) if mimo else model(images).unsqueeze(1)
        all_logits.append(logits.float().cpu())
        all_targets.append(targets.cpu())
    return torch.cat(all_logits), torch.cat(all_targets)
