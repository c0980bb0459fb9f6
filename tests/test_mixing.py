"""Exact tests of timm_mimo.mixing: masks, mixing ratios, schedules and the Mixer (MixMo, MixViT)."""
import math

import pytest
import torch

from timm_mimo.mixing import (
    MASK_KINDS,
    Mixer,
    MixPlan,
    concat_masks,
    cowmask_masks,
    cut_in_mix_masks,
    cutmix_box_masks,
    fmix_masks,
    majority_cutmix_masks,
    majority_vote_tokens,
    mix_probability,
    patchup_block_size,
    patchup_masks,
    progress,
    sample_gamma,
    sample_mixing_ratios,
    single_source_probability,
    swap_member_roles,
)


def _mixer(num_members: int, kind: str, seed: int = 0, **kwargs) -> Mixer:
    kwargs.setdefault('patch_size', 4)
    return Mixer(num_members, kind, generator=torch.Generator().manual_seed(seed), **kwargs)


def _assert_valid_plan(plan: MixPlan, batch_size: int, num_members: int, grid) -> None:
    plan.check(batch_size, num_members, grid)
    assert torch.allclose(plan.masks.sum(dim=1), torch.ones(batch_size, *grid), atol=1e-6)
    assert torch.allclose(plan.kappas, plan.masks.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(plan.kappas.sum(dim=1), torch.ones(batch_size), atol=1e-6)
    assert bool(((plan.masks >= 0) & (plan.masks <= 1)).all())


# ---------------------------------------------------------------------------------------------------- every kind

@pytest.mark.parametrize('num_members', [2, 3, 4])
@pytest.mark.parametrize('kind', MASK_KINDS)
def test_masks_sum_to_one_and_kappa_is_mask_mean(kind, num_members):
    grid = (8, 6)
    binary_mixer = _mixer(num_members, kind, prob=1.0)
    linear_mixer = _mixer(num_members, kind, prob=0.0)
    for _ in range(3):
        binary_plan = binary_mixer(16, grid)
        _assert_valid_plan(binary_plan, 16, num_members, grid)
        _assert_valid_plan(linear_mixer(16, grid), 16, num_members, grid)
    if kind != 'linear' and num_members == 2:
        assert binary_plan.binary
        assert bool(((binary_plan.masks == 0) | (binary_plan.masks == 1)).all())
    if kind == 'linear':
        assert not binary_plan.binary


@pytest.mark.parametrize('kind', MASK_KINDS)
def test_same_seed_gives_identical_plans(kind):
    mixer_a, mixer_b = _mixer(3, kind, seed=7, prob=0.5), _mixer(3, kind, seed=7, prob=0.5)
    for _ in range(4):
        plan_a, plan_b = mixer_a(8, (8, 8), progress=0.95), mixer_b(8, (8, 8), progress=0.95)
        assert torch.equal(plan_a.masks, plan_b.masks)
        assert torch.equal(plan_a.kappas, plan_b.kappas)
        assert plan_a.binary == plan_b.binary
    first = _mixer(3, kind, seed=7, prob=0.5)(8, (8, 8), progress=0.95)
    other = _mixer(3, kind, seed=8, prob=0.5)(8, (8, 8), progress=0.95)
    assert not torch.equal(first.kappas, other.kappas)


def test_mimo_summing_is_constant_one_over_m():
    for num_members in (2, 3, 4):
        plan = Mixer(num_members, 'linear', alpha=None)(4, (3, 5))
        assert torch.equal(plan.masks, torch.full((4, num_members, 3, 5), 1.0 / num_members))
        assert torch.equal(plan.kappas, torch.full((4, num_members), 1.0 / num_members))
        assert not plan.binary


def test_plan_goes_to_device():
    plan = _mixer(2, 'cutmix')(2, (4, 4), device=torch.device('cpu'))
    assert plan.masks.device.type == 'cpu'


# ---------------------------------------------------------------------------------------------------- CutMix boxes

def test_cutmix_box_area_is_r_sqrt_kappa_squared_before_clipping():
    # κ = 1/4 on 8×8: edge 8·√(1/4) = 4; centre (4, 4) -> rows and columns [2, 6), 16 cells = κ · 64
    masks = cutmix_box_masks(torch.tensor([0.25]), torch.tensor([[4, 4]]), (8, 8))
    expected = torch.zeros(8, 8)
    expected[2:6, 2:6] = 1
    assert torch.equal(masks[0], expected)
    # κ = 1/2: edge 8·√0.5 = 5.657 -> 6, box [1, 7) around centre (4, 4)
    masks = cutmix_box_masks(torch.tensor([0.5]), torch.tensor([[4, 4]]), (8, 8))
    assert masks.sum() == 36
    assert torch.equal(masks[0, 1:7, 1:7], torch.ones(6, 6))
    # non-square grid 4×8, κ = 1/4: box 2×4 = 8 cells = κ · 32
    masks = cutmix_box_masks(torch.tensor([0.25]), torch.tensor([[2, 4]]), (4, 8))
    assert torch.equal(masks[0].nonzero().unique(dim=0)[[0, -1]], torch.tensor([[1, 2], [2, 5]]))
    assert masks.sum() == 8


def test_cutmix_box_clipped_at_borders():
    kappas = torch.tensor([0.25, 0.25, 0.25, 1.0, 1.0, 0.0])
    centers = torch.tensor([[0, 0], [7, 7], [0, 5], [4, 4], [3, 3], [4, 4]])
    masks = cutmix_box_masks(kappas, centers, (8, 8))
    expected = torch.zeros(6, 8, 8)
    expected[0, 0:2, 0:2] = 1  # rows/cols [-2, 2) clipped to [0, 2): 2×2
    expected[1, 5:8, 5:8] = 1  # [5, 9) clipped to [5, 8): 3×3
    expected[2, 0:2, 3:7] = 1  # rows [-2, 2) -> 2, columns [3, 7) -> 4
    expected[3] = 1  # κ = 1: edge 8 centred at (4, 4): [0, 8), the whole map
    expected[4, 0:7, 0:7] = 1  # κ = 1 centred at (3, 3): [-1, 7) clipped to [0, 7)
    assert torch.equal(masks, expected)
    assert masks.mean(dim=(1, 2)).tolist() == [4 / 64, 9 / 64, 8 / 64, 1.0, 49 / 64, 0.0]


def test_cutmix_plan_kappa_is_remeasured_box_area():
    plan = _mixer(2, 'cutmix', prob=1.0, outside_swap=False)(32, (8, 8))
    box = plan.masks[:, 0]
    assert torch.equal(plan.kappas[:, 0], box.mean(dim=(1, 2)))
    rows, cols = box.amax(dim=2), box.amax(dim=1)
    # every mask is one axis-aligned rectangle: its area is (#rows) × (#cols)
    assert torch.equal(box.sum(dim=(1, 2)), rows.sum(1) * cols.sum(1))


# ---------------------------------------------------------------------------------------------------- other kinds

def test_concat_masks_by_hand():
    kappas = torch.tensor([0.25, 0.5])
    hconcat = concat_masks(kappas, (4, 8), 'hconcat')  # vertical line: left columns
    assert torch.equal(hconcat[0], torch.tensor([[1.0] * 2 + [0.0] * 6] * 4))
    assert torch.equal(hconcat[1], torch.tensor([[1.0] * 4 + [0.0] * 4] * 4))
    vconcat = concat_masks(kappas, (4, 8), 'vconcat')  # horizontal line: top rows
    assert torch.equal(vconcat[0], torch.tensor([[1.0] * 8] + [[0.0] * 8] * 3))
    assert torch.equal(vconcat[1].sum(dim=1), torch.tensor([8.0, 8.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match='hconcat'):
        concat_masks(kappas, (4, 8), 'diagonal')


def test_patchup_block_size_and_extremes():
    assert [patchup_block_size((g, g)) for g in (64, 32, 16, 8, 4)] == [7, 7, 3, 1, 1]
    gen = torch.Generator().manual_seed(0)
    assert patchup_masks(torch.zeros(3), (32, 32), gen).sum() == 0
    assert torch.equal(patchup_masks(torch.full((3,), 1e6), (32, 32), gen), torch.ones(3, 32, 32))
    # one seed grows into one 3×3 block (block_size 3, a single canvas point: γ chosen tiny, one sample that fires)
    masks = patchup_masks(torch.full((400,), 0.01), (16, 16), gen, block_size=3)
    single = masks[masks.sum(dim=(1, 2)) == 9]
    assert single.shape[0] > 0
    rows, cols = single[0].amax(dim=1).nonzero()[:, 0], single[0].amax(dim=0).nonzero()[:, 0]
    assert rows.numel() == 3 and cols.numel() == 3 and rows[-1] - rows[0] == 2
    # the γ recalibration keeps the covered area near κ (overlaps make it approximate)
    area = patchup_masks(torch.full((2000,), 0.5), (32, 32), gen).mean()
    assert abs(float(area) - 0.5) < 0.1


def test_fmix_is_exact_top_kappa_quantile():
    kappas = torch.tensor([0.0, 0.1, 0.5, 0.73, 1.0])
    masks = fmix_masks(kappas, (8, 10), torch.Generator().manual_seed(0))
    assert masks.sum(dim=(1, 2)).tolist() == [0.0, 8.0, 40.0, 58.0, 80.0]  # round(κ · 80)
    assert bool(((masks == 0) | (masks == 1)).all())


def test_cowmask_proportion_overrides_kappa():
    masks = cowmask_masks(500, (32, 32), torch.Generator().manual_seed(0))
    assert bool(((masks == 0) | (masks == 1)).all())
    areas = masks.mean(dim=(1, 2))
    assert abs(float(areas.mean()) - 0.5) < 0.05  # p ~ U(0.2, 0.8)
    assert float(areas.min()) > 0.05 and float(areas.max()) < 0.95


# ---------------------------------------------------------------------------------------------------- MixViT votes

def _pixel_mask_with_ties() -> torch.Tensor:
    """4×6 pixels = 2×3 patches of 2×2 with 4, 3, 2 / 1, 0, 2 masked pixels."""
    return torch.tensor([
        [1, 1, 1, 1, 1, 0],
        [1, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0],
    ], dtype=torch.float32)


def test_majority_vote_with_ties_by_hand():
    pixels = _pixel_mask_with_ties().expand(2, -1, -1)
    tokens = majority_vote_tokens(pixels, 2, tie_break=torch.tensor([True, False]))
    assert torch.equal(tokens[0], torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))  # ties -> input 0
    assert torch.equal(tokens[1], torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))  # ties -> input 1
    plan = MixPlan.from_masks(torch.stack([tokens, 1 - tokens], dim=1))
    # λ = fraction of tokens from input 0
    assert plan.kappas[:, 0].tolist() == pytest.approx([4 / 6, 2 / 6])
    assert plan.binary


def test_majority_vote_odd_patch_has_no_ties():
    pixels = torch.zeros(1, 3, 6)
    pixels[0, :, :2] = 1  # 6 of 9 pixels in patch 0
    pixels[0, :2, 3:5] = 1  # 4 of 9 in patch 1
    tokens = majority_vote_tokens(pixels, 3, tie_break=torch.tensor([True]))
    assert torch.equal(tokens, torch.tensor([[[1.0, 0.0]]]))
    with pytest.raises(ValueError, match='whole number'):
        majority_vote_tokens(torch.zeros(1, 4, 5), 2, torch.tensor([True]))


def test_majority_cutmix_equals_vote_on_pixel_box():
    kappas = torch.rand(300, generator=torch.Generator().manual_seed(1))
    for patch in [(2, 2), (4, 4), (3, 5)]:
        fast = majority_cutmix_masks(kappas, (5, 4), patch, torch.Generator().manual_seed(2))
        gen = torch.Generator().manual_seed(2)  # same draws in the same order: centres, then the tie coins
        pixel_grid = (5 * patch[0], 4 * patch[1])
        centers = torch.stack([torch.randint(pixel_grid[0], (300,), generator=gen),
                               torch.randint(pixel_grid[1], (300,), generator=gen)], dim=1)
        tie_break = torch.rand(300, generator=gen) < 0.5
        slow = majority_vote_tokens(cutmix_box_masks(kappas, centers, pixel_grid), patch, tie_break)
        assert torch.equal(fast, slow)


def test_cutmix_majority_plan_lambda_is_token_fraction():
    plan = _mixer(2, 'cutmix_majority', prob=1.0, alpha=0.5, patch_size=4)(64, (8, 8))
    assert plan.binary
    assert torch.equal(plan.kappas[:, 0], (plan.masks[:, 0] == 1).float().mean(dim=(1, 2)))


# ---------------------------------------------------------------------------------------------------- member roles

def test_cut_in_mix_by_hand():
    box = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    kappas = torch.tensor([[0.5, 0.3, 0.2]])
    masks = cut_in_mix_masks(box, kappas, torch.tensor([0]))
    # member 0 takes the box, members 1 and 2 share the rest as 0.3 / 0.5 and 0.2 / 0.5 (thesis eq. A.4)
    assert torch.allclose(masks[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(masks[0, :, 1, 1], torch.tensor([0.0, 0.6, 0.4]))
    masks = cut_in_mix_masks(box, kappas, torch.tensor([2]))
    assert torch.allclose(masks[0, :, 0, 1], torch.tensor([0.5 / 0.8, 0.3 / 0.8, 0.0]))
    assert torch.allclose(masks[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))


def test_swap_member_roles_is_the_outside_flip():
    masks = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    flipped = swap_member_roles(masks, torch.tensor([1, 0]))
    assert torch.equal(flipped[:, 0], 1 - masks[:, 0])
    assert torch.equal(swap_member_roles(masks, torch.tensor([0, 1])), masks)


def test_outside_swap_fires_on_some_batches_only():
    fired = kept = 0
    for seed in range(20):
        # same seed: the same κ and boxes; the swap (drawn last) permutes the member roles of the whole batch
        swapped = _mixer(2, 'cutmix', seed=seed, prob=1.0)(8, (8, 8))
        plain = _mixer(2, 'cutmix', seed=seed, prob=1.0, outside_swap=False)(8, (8, 8))
        if torch.equal(swapped.masks, plain.masks):
            kept += 1
        else:
            fired += 1
            assert torch.equal(swapped.masks[:, 0], 1 - plain.masks[:, 0])
            assert torch.allclose(swapped.kappas[:, 0], 1 - plain.kappas[:, 0])
    assert fired > 0 and kept > 0
    # without the swap, input 0 always holds the box: a single rectangle
    box = plain.masks[:, 0]
    assert torch.equal(box.sum(dim=(1, 2)), box.amax(dim=2).sum(1) * box.amax(dim=1).sum(1))


@pytest.mark.parametrize('num_members', [3, 4])
@pytest.mark.parametrize('prob', [0.0, 1.0])
def test_pair_only_leaves_m_minus_2_members_empty(num_members, prob):
    mixer = _mixer(num_members, 'cutmix_majority', prob=prob, alpha=0.5, pair_only=True)
    for _ in range(3):
        plan = mixer(32, (8, 8))
        _assert_valid_plan(plan, 32, num_members, (8, 8))
        empty_members = (plan.masks.amax(dim=(2, 3)) == 0).sum(dim=1)
        assert torch.equal(empty_members, (plan.kappas == 0).sum(dim=1))
        if prob == 1.0:
            assert plan.binary
            # the majority vote may leave a picked member without tokens (λ re-measured): at least M - 2 are empty
            assert (empty_members >= num_members - 2).all()
            assert (empty_members == num_members - 2).float().mean() > 0.8
        else:
            assert (empty_members == num_members - 2).all()  # linear batch: the pair's Beta ratios are > 0


def test_pair_only_with_extreme_ratios_never_leaks_to_unpicked_members():
    # α = 0.05 puts κ at 0 or 1 in float32: the partner still takes the whole complement of the box
    plan = _mixer(4, 'cutmix', alpha=0.05, prob=1.0, pair_only=True)(256, (6, 6))
    _assert_valid_plan(plan, 256, 4, (6, 6))
    assert ((plan.masks.amax(dim=(2, 3)) > 0).sum(dim=1) <= 2).all()
    assert plan.binary


def test_cut_in_mix_box_member_is_uniform_for_m_above_2():
    plan = _mixer(3, 'cutmix', prob=1.0, outside_swap=False)(3000, (8, 8))
    # the box member is the one whose mask has a value 1 somewhere (others are < 1 outside a full box)
    holds_box = (plan.masks == 1).flatten(2).any(dim=2).float()
    shares = holds_box.mean(dim=0)
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.04)


# ---------------------------------------------------------------------------------------------------- schedules

def test_progress_helper():
    assert progress(0, 0, 10, 12) == 0.0
    assert progress(11, 0, 10, 12) == pytest.approx(11 / 12)
    assert progress(5, 5, 10, 10) == pytest.approx(0.55)
    with pytest.raises(ValueError, match='steps_per_epoch'):
        progress(0, 0, 0, 10)


def test_mix_probability_schedule():
    assert mix_probability(0.5, 0.0) == 0.5
    assert mix_probability(0.5, 11 / 12) == pytest.approx(0.5)
    assert mix_probability(0.5, 23 / 24) == pytest.approx(0.25)
    assert mix_probability(0.5, 1.0) == 0.0
    assert mix_probability(0.5, 1.0, decay=False) == 0.5
    assert mix_probability(0.6, 0.5) == 0.6


def test_mixer_follows_the_p_schedule():
    mixer = _mixer(2, 'cutmix', prob=1.0)
    assert all(mixer(2, (4, 4), progress=0.5).binary for _ in range(10))
    assert not any(mixer(2, (4, 4), progress=1.0).binary for _ in range(10))
    no_decay = _mixer(2, 'cutmix', prob=1.0, prob_decay=False)
    assert all(no_decay(2, (4, 4), progress=1.0).binary for _ in range(10))
    half = _mixer(2, 'cutmix', prob=0.5)
    share = sum(half(2, (4, 4), progress=0.2).binary for _ in range(400)) / 400
    assert abs(share - 0.5) < 0.1
    assert not any(_mixer(2, 'linear', prob=1.0)(2, (4, 4)).binary for _ in range(10))


def test_single_source_end():
    assert single_source_probability(0.0) == 0.0
    assert single_source_probability(11 / 12) == 0.0
    assert single_source_probability(23 / 24) == pytest.approx(0.5)
    assert single_source_probability(1.0) == 1.0
    mixer = _mixer(3, 'cutmix_majority', prob=1.0, prob_decay=False, alpha=0.5, single_source_end=True)
    sources = []
    for _ in range(10):
        plan = mixer(16, (4, 4), progress=1.0)
        _assert_valid_plan(plan, 16, 3, (4, 4))
        assert plan.binary
        assert ((plan.kappas == 0) | (plan.kappas == 1)).all()
        assert torch.equal(plan.masks, plan.kappas[:, :, None, None].expand_as(plan.masks))
        sources.append(plan.kappas.argmax(dim=1))
    assert set(torch.cat(sources).tolist()) == {0, 1, 2}
    early = mixer(16, (4, 4), progress=0.5)
    assert not ((early.kappas == 0) | (early.kappas == 1)).all()


# ---------------------------------------------------------------------------------------------------- κ sampling

def test_gamma_moments():
    gen = torch.Generator().manual_seed(0)
    for shape in (0.5, 2.0):
        draws = sample_gamma(torch.full((40000,), shape), gen)
        assert abs(float(draws.mean()) - shape) < 0.03 * max(1.0, shape)
        assert abs(float(draws.var()) - shape) < 0.1 * max(1.0, shape)
        assert bool((draws > 0).all())


def test_beta_and_dirichlet_means():
    gen = torch.Generator().manual_seed(0)
    beta = sample_mixing_ratios(20000, 2, 2.0, gen)
    assert abs(float(beta[:, 0].mean()) - 0.5) < 0.01
    assert abs(float(beta[:, 0].var()) - 0.05) < 0.005  # Beta(2, 2): α² / ((2α)² (2α + 1)) = 1/20
    assert torch.allclose(beta.sum(dim=1), torch.ones(20000))
    for num_members, alpha in ((3, 0.5), (4, 2.0)):
        dirichlet = sample_mixing_ratios(20000, num_members, alpha, gen)
        assert torch.allclose(dirichlet.mean(dim=0), torch.full((num_members,), 1 / num_members), atol=0.01)
        assert torch.allclose(dirichlet.sum(dim=1), torch.ones(20000), atol=1e-5)
        # Dirichlet variance: (1/M)(1 - 1/M) / (M α + 1)
        expected_var = (1 / num_members) * (1 - 1 / num_members) / (num_members * alpha + 1)
        assert abs(float(dirichlet[:, 0].var()) - expected_var) < 0.1 * expected_var
    assert torch.equal(sample_mixing_ratios(3, 4, None), torch.full((3, 4), 0.25))


def test_kappas_are_drawn_per_sample():
    plan = _mixer(2, 'linear', alpha=2.0)(64, (2, 2))
    assert plan.kappas[:, 0].unique().numel() == 64
    assert math.isclose(float(plan.kappas.sum()), 64.0, rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize('kwargs, message', [
    (dict(kind='mixup'), 'unknown mask kind'),
    (dict(num_members=1), 'num_members'),
    (dict(prob=1.5), r'prob \(p\)'),
    (dict(prob=-0.1), r'prob \(p\)'),
    (dict(kind='cutmix_majority'), 'patch_size'),
    (dict(alpha=0.0), 'alpha'),
    (dict(alpha=-1.0), 'alpha'),
    (dict(patch_size=0), 'patch_size'),
])
def test_bad_mixer_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mixer(**kwargs)


def test_bad_call_arguments():
    mixer = Mixer()
    with pytest.raises(ValueError, match='progress'):
        mixer(4, (8, 8), progress=1.5)
    with pytest.raises(ValueError, match='grid'):
        mixer(4, (8, 0))
    with pytest.raises(ValueError, match='batch_size'):
        mixer(0, (8, 8))


# ---------------------------------------------------------------------------------------------------- MixShare inputs

def test_mixshare_mixer_arguments():
    mixer = Mixer(input_repeat=0.1, fadeout_epochs=4.0, generator=torch.Generator().manual_seed(0))
    assert mixer.input_repeat == 0.1 and 'fadeout_epochs=4.0' in repr(mixer)
    plan = mixer(3, (4, 4), progress=0.2, epoch=1.0)
    assert plan.unmix_relax == 0.25 and plan.to(torch.device('cpu')).unmix_relax == 0.25
    assert MixPlan.from_masks(plan.masks).unmix_relax == 0.0  # a hand-built plan unmixes fully
    with pytest.raises(ValueError, match='input_repeat'):
        Mixer(input_repeat=1.5)
    with pytest.raises(ValueError, match='epoch'):
        Mixer()(2, (4, 4), epoch=-1.0)
