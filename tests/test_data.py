"""The multi-input batch: batch repetition, DDP shards, pairing, input repetition, pixel mixing, CIFAR policies."""
from collections import Counter

import pytest
import torch
from PIL import Image

from timm_mimo.data import (
    BatchRepeatSampler,
    CifarAugMix,
    PixelMix,
    SimultaneousMixup,
    apply_pixel_mix,
    cifar_transform,
    corrected_mix_ratio,
    eval_transform,
    pair_inputs,
    soft_targets,
)
from timm_mimo.mixing import MixPlan


def test_batch_repeat_sampler_repeats_each_index_b_times():
    sampler = BatchRepeatSampler(num_samples=100, batch_size=8, batch_repeat=4, seed=3)
    batches = list(sampler)
    assert sampler.steps_per_epoch == len(batches) == 100 * 4 // 8  # |D|·b/bs steps
    seen = []
    for batch in batches:
        counts = Counter(batch)
        assert len(batch) == 8 and len(counts) == 2 and set(counts.values()) == {4}
        seen += list(counts)
    assert sorted(seen) == list(range(100))  # every index once per epoch, as one of bs/b unique per step


def test_batch_repeat_sampler_epochs_differ_and_are_reproducible():
    sampler = BatchRepeatSampler(num_samples=20, batch_size=4, batch_repeat=2, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_ddp_shards_are_disjoint_and_cover_the_global_batch():
    single = BatchRepeatSampler(num_samples=30, batch_size=12, batch_repeat=2, seed=5)
    ranks = [BatchRepeatSampler(num_samples=30, batch_size=4, batch_repeat=2, world_size=3, rank=r, seed=5)
             for r in range(3)]
    accum = BatchRepeatSampler(num_samples=30, batch_size=4, batch_repeat=2, grad_accum_steps=3, seed=5)
    accum_batches = list(accum)
    for step, (global_batch, *shards) in enumerate(zip(single, *ranks)):
        assert sum(shards, []) == global_batch  # shard r = positions [4r, 4r + 4) of the global batch
        assert accum_batches[3 * step:3 * step + 3] == shards  # 1 process x 3 micro-batches == 3 ranks
    assert len(ranks[0]) == single.steps_per_epoch == 30 * 2 // 12


def test_sampler_refuses_a_global_batch_not_divisible_by_b():
    with pytest.raises(ValueError, match='multiple of batch repeat'):
        BatchRepeatSampler(num_samples=30, batch_size=5, batch_repeat=2)


def test_pair_inputs_permutes_every_member_slot():
    images = torch.arange(10.0).view(10, 1, 1, 1)
    xs, ys = pair_inputs(images, torch.arange(10), num_members=3, generator=torch.Generator().manual_seed(0))
    assert xs.shape == (10, 3, 1, 1, 1) and ys.shape == (10, 3)
    for m in range(3):
        assert sorted(ys[:, m].tolist()) == list(range(10))
    assert torch.equal(xs.view(10, 3).long(), ys)  # image and target travel together
    assert (ys[:, 0] != ys[:, 1]).any()


def test_input_repetition_makes_all_members_see_the_same_image():
    images = torch.arange(20.0).view(20, 1, 1, 1)
    xs, ys = pair_inputs(images, torch.arange(20), num_members=2, input_repeat=0.25,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(ys[:5, 0], ys[:5, 1])  # ⌊20 · 0.25⌋ = 5 repeated positions
    assert (ys[5:, 0] != ys[5:, 1]).any()


def test_corrected_mix_ratio_counts_only_the_mixmo_region():
    keep = torch.zeros(1, 2, 2, 2)
    keep[0, :, 0, :] = 1.0  # the CutMix keeps the top row of both member inputs
    member = torch.zeros(1, 2, 2, 2)
    member[0, 0, 0, 0] = member[0, 0, 1, 0] = 1.0  # member 0 visible on the left column
    member[0, 1] = 1.0 - member[0, 0]
    member_masks = member
    lam = corrected_mix_ratio(keep, member_masks)
    assert lam.tolist() == [[0.5, 0.5]]
    member_masks = torch.zeros(1, 2, 2, 2)
    member_masks[0, 0, 1, :] = 1.0  # member 0 visible only on the bottom row: none of its kept pixels show
    member_masks[0, 1] = 1.0 - member_masks[0, 0]
    assert corrected_mix_ratio(keep, member_masks).tolist() == [[0.0, 1.0]]
    empty = torch.zeros(1, 2, 2, 2)  # κ = 0: the plain CutMix ratio
    assert corrected_mix_ratio(keep, empty).tolist() == [[0.5, 0.5]]


def test_apply_pixel_mix_swaps_when_the_visible_share_is_below_half():
    xs = torch.ones(1, 2, 1, 2, 2)
    partner_x = torch.full((1, 2, 1, 2, 2), 5.0)
    targets = soft_targets(torch.tensor([[0, 1]]), 3)
    partner_y = soft_targets(torch.tensor([[2, 2]]), 3)
    keep = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]]])  # shares 3/4 and 1/4
    member_masks = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    mixed_x, mixed_y = apply_pixel_mix(xs, targets, partner_x, partner_y, keep, member_masks)
    assert mixed_x[0, 0, 0].tolist() == [[1.0, 1.0], [1.0, 5.0]]  # no swap
    assert mixed_x[0, 1, 0].tolist() == [[5.0, 1.0], [1.0, 1.0]]  # swapped: own image on 3/4 of the pixels
    assert mixed_y.tolist() == [[[0.75, 0.0, 0.25], [0.0, 0.75, 0.25]]]
    # inside member 0's MixMo region (left column) only 1 of 2 kept pixels shows: λ' = 1/2, weights follow λ'
    member_masks = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    _, mixed_y = apply_pixel_mix(xs, targets, partner_x, partner_y, keep, member_masks)
    assert mixed_y[0, 0].tolist() == [1.0, 0.0, 0.0]  # left column fully kept -> λ' = 1
    assert mixed_y[0, 1].tolist() == [0.0, 1.0, 0.0]  # right column: kept 0 of 2 -> λ' = 0 -> swap -> 1


def test_pixel_mix_keeps_the_mixmo_correction_by_default_and_drops_it_on_request():
    """Decision: every model (MixViT too) gets MixMo's λ' and swap by default; ``mixmo_correction=False`` is the
    DeiT-style label, λ = the kept share of the whole image, never swapped."""
    assert PixelMix(cutmix_alpha=1.0).mixmo_correction
    xs = torch.ones(1, 2, 1, 2, 2)
    partner_x = torch.full((1, 2, 1, 2, 2), 5.0)
    targets = soft_targets(torch.tensor([[0, 1]]), 3)
    partner_y = soft_targets(torch.tensor([[2, 2]]), 3)
    keep = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]]])  # shares 3/4 and 1/4
    member_masks = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    mixed_x, mixed_y = apply_pixel_mix(xs, targets, partner_x, partner_y, keep, member_masks, correction=False)
    assert mixed_x[0, 1, 0].tolist() == [[1.0, 5.0], [5.0, 5.0]]  # not swapped although its share is 1/4
    assert mixed_y.tolist() == [[[0.75, 0.0, 0.25], [0.0, 0.25, 0.75]]]  # whole-image shares, MixMo masks ignored
    plan = MixPlan.from_masks(member_masks)
    mixer = PixelMix(cutmix_alpha=1.0, prob=1.0, mixmo_correction=False)
    generator = torch.Generator().manual_seed(0)
    partners = torch.full((4, 1, 2, 2), 5.0)
    mixed_x, mixed_y = mixer(xs, targets, plan, partners, soft_targets(torch.tensor([2, 2, 2, 2]), 3), generator)
    own_share = (mixed_x == 1.0).float().mean(dim=(2, 3, 4))
    torch.testing.assert_close(mixed_y[..., 2], 1.0 - own_share)  # λ = kept share of the whole image


def test_pixel_mix_outputs_are_consistent_mixtures():
    generator = torch.Generator().manual_seed(0)
    xs = torch.rand(6, 2, 1, 8, 8)
    targets = soft_targets(torch.randint(0, 4, (6, 2)), 4)
    plan = MixPlan.from_masks(torch.stack([torch.ones(6, 4, 4), torch.zeros(6, 4, 4)], dim=1))
    partners = torch.rand(6, 1, 8, 8) + 10.0  # the dataset partners: every pixel > 10
    partner_y = soft_targets(torch.randint(0, 4, (6,)), 4)
    mixed_x, mixed_y = PixelMix(cutmix_alpha=1.0, prob=1.0)(xs, targets, plan, partners, partner_y, generator)
    own = (mixed_x == xs).float().mean(dim=(2, 3, 4))
    assert ((mixed_x == xs) | (mixed_x > 10)).all()  # every pixel is its own or a dataset partner's
    assert (own[:, 0] >= 0.5).all()  # member 0's region is the whole image: its own image predominates
    assert (own < 1).any()  # and partners did come in
    assert torch.allclose(mixed_y.sum(-1), torch.ones(6, 2))


def test_pixel_mix_with_cutmix_and_mixup_applies_both_at_once():
    # MixViT: a CutMix box inside which the partner enters with a continuous Mixup weight; outside the box keep = 1
    mixer = PixelMix(cutmix_alpha=1.0, mixup_alpha=0.8, prob=1.0)
    keep = mixer.sample_keep_masks((200, 1), (8, 8), torch.Generator().manual_seed(3)).view(200, 64)
    for row in keep:
        values = set(row.tolist())
        assert 1.0 in values or len(values) == 1  # outside the box: the own image
        inside = values - {1.0}
        assert len(inside) <= 1  # one continuous Mixup weight inside the box
    fractional = (keep > 0) & (keep < 1)
    assert fractional.any()  # neither a binary CutMix mask ...
    assert (keep == 1).any(dim=1).float().mean() > 0.5  # ... nor a whole-image Mixup
    assert not ((keep == 0) | (keep == 1)).all()


def test_sampler_appends_dataset_partners_seeded_per_shard():
    def shards(**kwargs):
        return list(BatchRepeatSampler(num_samples=40, batch_repeat=2, seed=5, num_partners=4, **kwargs))
    single = shards(batch_size=4, grad_accum_steps=2)
    ranks = [shards(batch_size=4, world_size=2, rank=r) for r in range(2)]
    assert [len(s) for s in single] == [8] * len(single)  # 4 shard indices + 4 partners
    for step in range(len(ranks[0])):
        assert single[2 * step] == ranks[0][step] and single[2 * step + 1] == ranks[1][step]
    partners = [index for shard in single for index in shard[4:]]
    assert len(set(partners)) > 20  # drawn from the whole dataset, not from the shard
    assert any(set(shard[4:]) - set(shard[:4]) for shard in single)


def test_transforms_pad_gray_fashion_mnist_to_32_and_3_channels():
    img = Image.new('L', (28, 28), color=255)
    train = cifar_transform((3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pad=4)
    assert train(img).shape == (3, 32, 32)
    gray = eval_transform((1, 32, 32), mean=(0.2, 0.4, 0.6), std=(0.5, 0.5, 0.5))(img)
    assert gray.shape == (1, 32, 32)
    assert gray[0, 0, 0].item() == pytest.approx((0.0 - 0.4) / 0.5)  # padding, normalised with the mean mean
    assert gray[0, 16, 16].item() == pytest.approx((1.0 - 0.4) / 0.5)


def test_simultaneous_mixup_fills_a_cutmix_box_with_a_mixup_blend():
    """MixViT's pixel MSDA for single-input models (thesis App. A.1.5): outside the box the image is its own, inside
    it is ``λ_mix x + (1 - λ_mix) x_partner``; the label weight is the kept share of the whole image."""
    import numpy as np
    mixup = SimultaneousMixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=3)
    seen_blend = False
    for seed in range(20):
        np.random.seed(seed)  # noqa: NPY002  (timm's Mixup draws from numpy's global generator)
        x = torch.cat([torch.zeros(1, 1, 16, 16), torch.full((1, 1, 16, 16), 10.0)])
        mixed, target = mixup(x.clone(), torch.tensor([0, 1]))
        partner_share = mixed[0, 0] / 10.0  # image 0 is 0 everywhere, its partner (image 1) 10
        inside = partner_share > 0
        assert torch.allclose(mixed[1, 0], 10.0 * (1.0 - partner_share))  # the same mask seen from image 1
        if inside.any():  # one partner weight, 1 - λ_mix, over one rectangle
            weights = partner_share[inside].unique()
            assert weights.numel() == 1 and 0 < weights.item() <= 1
            rows, cols = inside.nonzero(as_tuple=True)
            assert inside[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            seen_blend |= bool(weights.item() < 1 and inside.float().mean() < 1)
        lam = 1.0 - partner_share.mean().item()
        torch.testing.assert_close(target, torch.tensor([[lam, 1 - lam, 0.0], [1 - lam, lam, 0.0]]))
    assert seen_blend  # a box that is neither empty nor the whole image, blended rather than pasted
    with pytest.raises(ValueError, match='both alphas'):
        SimultaneousMixup(mixup_alpha=0.0, cutmix_alpha=1.0)


def test_cifar_augmix_follows_the_thesis_text(monkeypatch):
    """Decision (docs/decisions.md): thesis App. A.1.3.1's "default parameters: the severity is set 3, the mixture's
    width to 3 and the mixture's depth to 4", 8 operations; AugMix's default depth is random, so 4 is the maximum of a
    depth drawn per chain in 1..4 (as the MixMo authors' code draws it), not a fixed depth."""
    import torchvision.transforms.autoaugment as autoaugment
    augmix = CifarAugMix()
    assert (augmix.severity, augmix.mixture_width, augmix.chain_depth.maximum) == (3, 3, 4)
    ops = set(augmix._augmentation_space(10, (32, 32)))
    assert ops == {'Equalize', 'Posterize', 'Rotate', 'Solarize', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY'}
    torch.manual_seed(0)
    assert {len(range(augmix.chain_depth)) for _ in range(200)} == {1, 2, 3, 4}
    applied = []
    apply_op = autoaugment._apply_op
    monkeypatch.setattr(autoaugment, '_apply_op', lambda *a, **k: applied.append(1) or apply_op(*a, **k))
    image = Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy())
    ops_per_image = []
    for _ in range(40):
        applied.clear()
        out = augmix(image)
        ops_per_image.append(len(applied))
    # 3 chains of 1..4 operations each: more than 9 needs a chain of 4 (torchvision's own draw stops at 3), fewer
    # than 12 a chain shorter than 4 (a fixed depth 4 always gives 12)
    assert 3 <= min(ops_per_image) and max(ops_per_image) <= 12
    assert max(ops_per_image) > 9 and min(ops_per_image) < 12
    assert out.size == (32, 32) and out.mode == 'RGB'
