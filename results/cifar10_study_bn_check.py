"""Diagnostic behind results/README.md: does re-estimating BatchNorm statistics at inference mixing recover a run?

    python results/cifar10_study_bn_check.py cut_mixmo-seed1 cut_mixmo-seed0 single_wrn-seed0

For each run of ``output/cifar10_study``: test top-1 of ``last.pth.tar`` on a fixed random 3,000 test images; then
every BatchNorm's running statistics are reset and re-estimated (``torch.optim.swa_utils.update_bn``, a cumulative
average) from 3,000 random training images fed as a plain batch in train mode (a MIMO model gives the image to every
member and sums the encodings, its inference path), and top-1 is measured again. Not part of the study's protocol:
the study reports the checkpoints as trained.
"""
import sys
import warnings

import torch
from timm.data import create_transform, resolve_data_config
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from timm_mimo.evaluation import model_from_checkpoint

NUM_IMAGES, BATCH = 3000, 250


def top1(model: torch.nn.Module, loader: DataLoader) -> float:
    correct = total = 0
    with torch.no_grad():
        for images, targets in loader:
            correct += (model(images).argmax(-1) == targets).sum().item()
            total += len(targets)
    return 100 * correct / total


def main(runs) -> None:
    torch.manual_seed(0)
    for run in runs:
        model = model_from_checkpoint(f'output/cifar10_study/{run}/last.pth.tar').eval()
        transform = create_transform(**resolve_data_config({}, model=model))
        test = ImageFolder('data/cifar10_study/test', transform)
        train = ImageFolder('data/cifar10_study/train', transform)
        test_loader = DataLoader(Subset(test, torch.randperm(len(test))[:NUM_IMAGES].tolist()), batch_size=BATCH)
        before = top1(model, test_loader)
        train_subset = Subset(train, torch.randperm(len(train))[:NUM_IMAGES].tolist())
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the plain-batch-in-train-mode warning: intended here
            update_bn(DataLoader(train_subset, batch_size=BATCH), model)  # cumulative average, back in eval mode
        model.eval()
        print(f'{run}: test top-1 on {NUM_IMAGES} images {before:.2f} as trained, {top1(model, test_loader):.2f} '
              f'after re-estimating BatchNorm statistics on {NUM_IMAGES} training images', flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
