"""Evaluation metrics of MIMO ensembles: accuracy, NLL, calibrated NLL, ECE, Brier, AURC, diversity, OOD detection.

Everything starts from member logits ``(N, M, K)`` and targets ``(N,)``; a plain timm model is the case M = 1.
Decision: the ensemble averages LOGITS (MixMo, arXiv:2103.06132, and MIMO, arXiv:2010.06610, average "the
predictions" without saying which; MixMo's released code averages logits); probability averaging is reported in
``*_prob`` columns. Standard metrics come from torchmetrics (ECE,
AUROC, AUPR, FPR at 95 % TPR); what no library computes (calibrated NLL, Brier score over classes, AURC,
ratio-error diversity) is written here.
"""
import itertools
import math
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_specificity_at_sensitivity,
    multiclass_calibration_error,
)

__all__ = [
    'topk_accuracy', 'nll', 'fit_temperature', 'split_halves', 'calibrated_nll', 'expected_calibration_error',
    'ratio_error_diversity', 'disagreement', 'brier_score', 'aurc', 'ensemble_metrics', 'uncertainty_scores',
    'ood_detection', 'ood_metrics', 'is_mimo', 'collect_member_logits',
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
    """The temperature T minimising the NLL of ``softmax(logits / T)`` (Guo et al., ICML 2017).

    Decision: golden-section search on ``log(1/T) ∈ [log 1e-3, log 1e3]``. The NLL is convex in
    ``β = 1/T`` (log-sum-exp minus a linear term), so it is unimodal in ``log β`` and the search cannot get stuck;
    unlike LBFGS it needs no learning-rate grid (the papers do not name the optimiser).
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

    Decision: a random permutation from a fixed seed (0), first ``⌊N/2⌋`` indices = half A.
    Not first/second half by position: folder datasets list images class by class, which would calibrate on other
    classes than it evaluates (the thesis, HAL tel-03952815, Sec. 3.3.4, does not say how the halves are drawn).
    """
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return order[:num_samples // 2], order[num_samples // 2:]


def calibrated_nll(logits: torch.Tensor, targets: torch.Tensor,
                   halves: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Tuple[float, float, float]:
    """NLL_c with the two-half cross protocol of the thesis (HAL tel-03952815) Sec. 3.3.4 (after Ashukha et al. 2020).

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
    """ECE in % over ``num_bins`` equal-width confidence bins (Guo et al., ICML 2017; MixMo reports 15 bins).

    ``ECE = Σ_bins |bin| / N · |accuracy(bin) − mean confidence(bin)|``, computed by torchmetrics'
    ``multiclass_calibration_error`` (its bins are ``[i/n, (i+1)/n)``: a confidence exactly on a bin edge goes to the
    upper bin, where Guo et al. write ``(i/n, (i+1)/n]``; the two differ only for confidences exactly on an edge).
    torchmetrics bins in float32: the result is exact to about 1e-6 %.
    """
    probs = probs.double()
    return 100.0 * multiclass_calibration_error(probs, targets, num_classes=probs.shape[-1], n_bins=num_bins,
                                                norm='l1', validate_args=False).item()


def brier_score(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Multi-class Brier score (Brier 1950): ``mean_n Σ_k (p_nk − 1[k = y_n])²``, in ``[0, 2]``.

    Summed over classes as in the original definition and torch-uncertainty; a perfect one-hot predictor scores 0,
    the uniform predictor ``1 − 1/K``.
    """
    probs = probs.double()
    one_hot = F.one_hot(targets.long(), probs.shape[-1]).double()
    return (probs - one_hot).pow(2).sum(dim=-1).mean().item()


def aurc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """Area under the risk–coverage curve of selective classification (Geifman & El-Yaniv, NeurIPS 2017/ICLR 2019).

    Samples are accepted in decreasing confidence; at coverage ``i / N`` the selective risk is the error rate of the
    ``i`` most confident samples; ``AURC = (1/N) Σ_{i=1..N} risk(i / N)`` (lower is better; 0 for a perfect
    predictor, the error rate for a confidence unrelated to correctness, on average).

    Decision: the mean over the N coverages (Geifman et al.'s sum), ties in confidence broken by sample order
    (stable sort, reproducible). torch-uncertainty integrates the same curve with the trapezoid rule, renormalised by
    ``1 − 1/N``: the two differ by O(1/N).

    Args:
        confidence: ``(N,)`` confidence of every prediction (e.g. the maximum softmax probability).
        correct: ``(N,)`` bool, whether the prediction is right.
    """
    order = torch.sort(confidence.double(), descending=True, stable=True).indices
    errors = (~correct.bool())[order].double().cumsum(0)
    accepted = torch.arange(1, confidence.numel() + 1, dtype=torch.float64)
    return (errors / accepted).mean().item()


def _member_pairs(num_members: int) -> Sequence[Tuple[int, int]]:
    return list(itertools.combinations(range(num_members), 2))


def ratio_error_diversity(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """d_re: mean over member pairs of ``(N01 + N10) / N00`` (Aksela 2003; thesis HAL tel-03952815 Sec. 3.3.5).

    N01 / N10: exactly one member of the pair is wrong; N00: both are wrong (even with different classes).
    Decision: when N00 = 0 the ratio is ``2 (N01 + N10)`` (the papers leave it undefined; MixMo's released code does
    this).

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
    """Every metric of one evaluation, with timm's column names where they exist.

    Args:
        member_logits: ``(N, M, K)``; M = 1 for a plain model (ensemble columns only).
        targets: ``(N,)``.

    Returns:
        Ordered dict: ``top1, top5, loss`` (loss = NLL of the ensemble), ``nll_c, temperature_a, temperature_b,
        ece, brier, aurc`` (on the ensemble's softmax) and, for M > 1, ``top1_prob, top5_prob, nll_prob``
        (probability averaging), ``member_top1`` (mean over members), ``top1_m<i>, top5_m<i>, nll_m<i>`` per
        member, ``d_re`` and ``disagreement``.
    """
    member_logits, targets = member_logits.double(), targets.long()
    num_members = member_logits.shape[1]
    logits = member_logits.mean(dim=1)  # the ensemble averages logits
    probs = logits.softmax(dim=-1)
    confidence, prediction = probs.max(dim=-1)
    nll_c, temp_a, temp_b = calibrated_nll(logits, targets)
    out = OrderedDict(
        top1=topk_accuracy(logits, targets, 1), top5=topk_accuracy(logits, targets, 5), loss=nll(logits, targets),
        nll_c=nll_c, temperature_a=temp_a, temperature_b=temp_b, ece=expected_calibration_error(probs, targets),
        brier=brier_score(probs, targets), aurc=aurc(confidence, prediction == targets))
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


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-300).log()).sum(dim=-1)


def uncertainty_scores(member_logits: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-sample uncertainty scores, higher = more likely out-of-distribution.

    ``msp``: minus the maximum softmax probability (Hendrycks & Gimpel, ICLR 2017); ``entropy``: the predictive
    entropy; both of the ensemble's distribution ``softmax(mean_m logits_m)``, the one the model predicts with.
    ``mutual_info`` (M > 1 only): ``H(mean_m p_m) − mean_m H(p_m)`` of the members' softmaxes ``p_m``, the
    disagreement term of the entropy decomposition (Depeweg et al., ICML 2018), which is only defined on averaged
    probabilities.

    Args:
        member_logits: ``(N, M, K)``.
    """
    member_logits = member_logits.double()
    probs = member_logits.mean(dim=1).softmax(dim=-1)
    scores = OrderedDict(msp=-probs.max(dim=-1).values, entropy=_entropy(probs))
    if member_logits.shape[1] > 1:
        member_probs = member_logits.softmax(dim=-1)
        scores['mutual_info'] = _entropy(member_probs.mean(dim=1)) - _entropy(member_probs).mean(dim=1)
    return scores


def _to_unit_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Scores mapped to ``(0, 1]`` by their dense rank: the same order and ties, so torchmetrics' binary metrics
    never apply their sigmoid to out-of-range scores (which would merge large scores into ties in float32)."""
    unique, rank = torch.unique(scores, sorted=True, return_inverse=True)
    return (rank + 1).double() / unique.numel()


def ood_detection(in_scores: torch.Tensor, out_scores: torch.Tensor) -> Tuple[float, float, float]:
    """AUROC, AUPR and FPR at 95 % TPR in %, out-of-distribution samples being the positive class.

    Decision: OOD is the positive class (as torch-uncertainty does): AUPR is the average precision of finding the OOD
    samples, FPR@95 the share of in-distribution samples flagged when 95 % of the OOD samples are. All three come
    from torchmetrics (``binary_auroc``, ``binary_average_precision``, ``binary_specificity_at_sensitivity``).

    Args:
        in_scores: ``(N_in,)`` scores of in-distribution samples (higher = more OOD).
        out_scores: ``(N_out,)`` scores of out-of-distribution samples.
    """
    if in_scores.numel() == 0 or out_scores.numel() == 0:
        raise ValueError(f'OOD detection needs samples on both sides, got {in_scores.numel()} in-distribution and '
                         f'{out_scores.numel()} out-of-distribution scores')
    scores = _to_unit_ranks(torch.cat([in_scores, out_scores]).double())
    is_ood = torch.cat([torch.zeros(in_scores.numel()), torch.ones(out_scores.numel())]).long()
    auroc = binary_auroc(scores, is_ood).item()
    aupr = binary_average_precision(scores, is_ood).item()
    specificity, _ = binary_specificity_at_sensitivity(scores, is_ood, min_sensitivity=0.95)
    return 100.0 * auroc, 100.0 * aupr, 100.0 * (1.0 - specificity.item())


def ood_metrics(in_member_logits: torch.Tensor, out_member_logits: torch.Tensor) -> Dict[str, float]:
    """``ood_<score>_{auroc,aupr,fpr95}`` for every :func:`uncertainty_scores` score.

    Args:
        in_member_logits: ``(N_in, M, K)`` member logits on the in-distribution test set.
        out_member_logits: ``(N_out, M, K)`` member logits on the out-of-distribution images.
    """
    in_scores, out_scores = uncertainty_scores(in_member_logits), uncertainty_scores(out_member_logits)
    out: Dict[str, float] = OrderedDict()
    for name in in_scores:
        auroc, aupr, fpr95 = ood_detection(in_scores[name], out_scores[name])
        out[f'ood_{name}_auroc'], out[f'ood_{name}_aupr'], out[f'ood_{name}_fpr95'] = auroc, aupr, fpr95
    return out


def is_mimo(model: torch.nn.Module) -> bool:
    """A model is MIMO iff it has ``num_members`` and ``forward_members`` (the :class:`MimoContract`)."""
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
        images = images.to(device, non_blocking=True)  # no copy when a prefetcher put it there already
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model.forward_members(images) if mimo else model(images).unsqueeze(1)
        all_logits.append(logits.float())  # kept on the device: one copy back at the end, not one per batch
        all_targets.append(targets)
    if not all_logits:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits).cpu(), torch.cat([t.to(device) for t in all_targets]).cpu()
