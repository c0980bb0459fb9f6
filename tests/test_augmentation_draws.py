"""The training loader's augmentation draws are independent across samples, steps, epochs and workers.

Each image of a coded dataset carries its own pixel coordinates (red = column, green = row) and its index (blue), so
the crop offset and the flip the loader applied can be read back from the batch. Over E epochs, each sample's draws
must look like E independent uniform draws of (row offset, column offset, flip): as many distinct values as expected,
no repeat of the previous epoch beyond chance, uniform marginals, and as many distinct draws inside one batch as
independent samples give. A seed that ignores the epoch (a known-bad data path) is caught.
"""
import collections
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import timm_mimo.loader as loader_module
from timm_mimo.data import BatchRepeatSampler, create_image_transform
from timm_mimo.loader import ShardDataset, pack_batch

NUM_SAMPLES, BATCH, EPOCHS, PAD = 64, 16, 24, 4
CELLS = (2 * PAD + 1) ** 2 * 2  # crop offsets x flip


class CodedImages(Dataset):
    """32 px RGB images whose red / green channels code the column / row (8 · index + 4) and blue the sample index."""

    def __init__(self, transform):
        self.transform = transform
        rows, cols = np.mgrid[0:32, 0:32]
        self.base = np.stack([8 * cols + 4, 8 * rows + 4, np.zeros_like(cols)], -1)

    def __len__(self) -> int:
        return NUM_SAMPLES

    def __getitem__(self, index: int):
        image = self.base.copy()
        image[..., 2] = index
        return self.transform(Image.fromarray(image.astype(np.uint8))), index % 10


def decode(image: torch.Tensor) -> Tuple[int, int, int, bool]:
    """(sample index, row offset, column offset, flipped) of one uint8 training image, read at its centre."""
    red, green, blue = image.to(torch.int64)
    flipped = bool(red[16, 17] < red[16, 16])
    column, row = (int(red[16, 16]) - 4) // 8, (int(green[16, 16]) - 4) // 8
    # output (16, 16) reads the padded crop at (16, 16), or (16, 15) when flipped: offset = coordinate - 16 + PAD
    return int(blue[16, 16]), row - 16 + PAD, column - (15 if flipped else 16) + PAD, flipped


def collect_draws(workers: int) -> Tuple[Dict[int, List[tuple]], List[List[tuple]]]:
    """Per sample, its (row, column, flip) draw in every epoch; per batch, the draws of its samples."""
    config = dict(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    dataset = CodedImages(create_image_transform(config, True, PAD, 0.5, normalize=False))
    sampler = BatchRepeatSampler(NUM_SAMPLES, BATCH, 1, 1, 0, 1, 0, 0)
    shards = ShardDataset(dataset, None, sampler.steps_per_epoch, EPOCHS, seed=0)
    loader = DataLoader(shards, batch_sampler=sampler, collate_fn=pack_batch, num_workers=workers,
                        persistent_workers=workers > 0)
    per_sample, per_batch = collections.defaultdict(list), []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        for packed in loader:
            batch = packed.unpack()
            draws = [decode(image) for image in batch.images]
            per_batch.append([draw[1:] for draw in draws])
            for index, *draw in draws:
                per_sample[index].append(tuple(draw))
    return per_sample, per_batch


def independence_figures(per_sample: Dict[int, List[tuple]], per_batch: List[List[tuple]]) -> Dict[str, float]:
    """Observed / expected ratios of the statistics that correlated draws would break."""
    draws = [draw for values in per_sample.values() for draw in values]
    distinct_per_sample = np.mean([len(set(values)) for values in per_sample.values()])
    distinct_per_batch = np.mean([len(set(values)) for values in per_batch])
    repeats = np.mean([values[i] == values[i - 1] for values in per_sample.values() for i in range(1, len(values))])
    offsets = np.bincount([draw[0] * (2 * PAD + 1) + draw[1] for draw in draws], minlength=(2 * PAD + 1) ** 2)
    expected_count = len(draws) / (2 * PAD + 1) ** 2
    return dict(
        distinct_per_sample=distinct_per_sample / (CELLS * (1 - (1 - 1 / CELLS) ** EPOCHS)),
        distinct_per_batch=distinct_per_batch / (CELLS * (1 - (1 - 1 / CELLS) ** BATCH)),
        repeat_rate=repeats * CELLS,  # 1.0 for independent epochs
        flip_rate=np.mean([draw[2] for draw in draws]) / 0.5,
        offset_chi2_per_dof=float(((offsets - expected_count) ** 2 / expected_count).sum()) / (offsets.size - 1),
    )


def assert_independent(figures: Dict[str, float]) -> None:
    assert 0.9 < figures['distinct_per_sample'] < 1.1, figures
    assert 0.9 < figures['distinct_per_batch'] < 1.1, figures
    assert figures['repeat_rate'] < 3.0, figures
    assert 0.9 < figures['flip_rate'] < 1.1, figures
    assert figures['offset_chi2_per_dof'] < 2.0, figures


@pytest.mark.parametrize('workers', [0, 2])
def test_every_sample_draws_its_own_crop_and_flip_every_epoch(workers):
    per_sample, per_batch = collect_draws(workers)
    assert sorted(per_sample) == list(range(NUM_SAMPLES))
    assert all(len(values) == EPOCHS for values in per_sample.values())
    assert_independent(independence_figures(per_sample, per_batch))


def test_a_seed_that_ignores_the_epoch_is_caught(monkeypatch):
    seed_of = loader_module.augmentation_seed
    monkeypatch.setattr(loader_module, 'augmentation_seed',
                        lambda seed, epoch, step, shard: seed_of(seed, 0, step, shard))
    with pytest.raises(AssertionError):
        assert_independent(independence_figures(*collect_draws(0)))
