"""MixViT vs its backbone: inference FLOPs and latency, and the train step.

For every pair, in one process: inference FLOPs of the MixViT (parallel inference) over its backbone's, against the
papers' bound ``(L + n·M) / (L + n)`` (L shared blocks, n member blocks: the rule of thumb of the MixViT paper
Sec. 2.4 / thesis Sec. 4.3.3.2; for a ViT of L' blocks, ``(L' - n + n·M) / L'``) and the targets (≤ 1.10 for the papers'
ConViT, ≤ 1.04 for the CaiT-24 models); eval latency ratio; train-step time ratio (MixViT on a Mixer plan
+ MimoLoss vs backbone + cross-entropy, same batch B, AdamW step). FLOPs are counted at the model's real input size;
timing may run at a smaller size (the table says which) to keep the run to a few minutes on a CPU.
"""
import argparse
from typing import Callable, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_mimo  # noqa: F401  (registration)
from benchmarks.common import count_flops, count_params, interleaved_throughput, print_table
from timm_mimo.loss import MimoLoss
from timm_mimo.mixing import Mixer
from timm_mimo.models.mixvit import MixViT, create_backbone

# name -> (backbone factory kwargs for the timing size, timing batch, FLOPs target)
PAIRS: Dict[str, Dict] = {
    'mixvit_convit_gpsa5_ca2': dict(timing=dict(), batch=32, target=1.10),
    'mixvit_convit_tiny': dict(timing=dict(), batch=8, target=None),
    'mixvit_cait_xxs24': dict(timing=dict(), batch=4, target=1.04),
    'mixvit_cait_xs24': dict(timing=dict(img_size=224), batch=4, target=1.04),
    'mixvit_cait_s24': dict(timing=dict(img_size=112), batch=4, target=1.04),
    'mixvit_cait_m24': dict(timing=dict(img_size=64), batch=4, target=1.04),
    'mixvit_deit_small_patch16_224': dict(timing=dict(), batch=4, target=None),
    'mixvit_vit_base_patch16_224': dict(timing=dict(), batch=4, target=None),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--models', nargs='+', default=list(PAIRS), choices=list(PAIRS),
                        help='MixViT entrypoints to measure against their backbones')
    parser.add_argument('--num-members', type=int, default=2, help='M')
    parser.add_argument('--source', default='embedding', help='source attribution of the MixViT')
    parser.add_argument('--member-blocks', type=int, default=None,
                        help='blocks run per member (VisionTransformer backbones; default: the model\'s, 2)')
    parser.add_argument('--batch-size', type=int, default=None, help='override the per-model timing batch')
    parser.add_argument('--rounds', type=int, default=3, help='alternating timed rounds per measurement')
    parser.add_argument('--min-seconds', type=float, default=0.5, help='minimum duration of one timed round')
    parser.add_argument('--no-train', action='store_true', help='skip the train-step measurement')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')


def _pair(name: str, args: argparse.Namespace, **size: int) -> Tuple[MixViT, nn.Module]:
    extra = {} if args.member_blocks is None else dict(member_blocks=args.member_blocks)
    mixvit = timm.create_model(name, num_members=args.num_members, source=args.source, **extra, **size)
    return mixvit, create_backbone(mixvit.backbone_name, num_classes=mixvit.num_classes, **size)


def _train_step(model: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()
    return step


def _measure(name: str, args: argparse.Namespace) -> Dict[str, object]:
    spec = PAIRS[name]
    torch.manual_seed(0)
    mixvit, backbone = _pair(name, args)
    size = mixvit.pretrained_cfg['input_size']
    m, shared, member = mixvit.num_members, mixvit.num_shared_blocks, mixvit.num_member_blocks
    mixvit.eval(), backbone.eval()
    x = torch.randn(1, *size)
    flops_mixvit = count_flops(lambda: mixvit(x))
    flops_backbone = count_flops(lambda: backbone(x))
    row: Dict[str, object] = {
        'model': name, 'backbone': mixvit.backbone_name, 'M': m, 'L+n': f'{shared}+{member}',
        'params ratio': count_params(mixvit) / count_params(backbone),
        'FLOPs px': size[-1], 'GFLOPs backbone': flops_backbone / 1e9,
        'FLOPs ratio': flops_mixvit / flops_backbone, 'bound (L+nM)/(L+n)': (shared + member * m) / (shared + member),
        'target': spec['target'] if spec['target'] is not None else '-',
    }
    if spec['timing']:
        del mixvit, backbone
        mixvit, backbone = _pair(name, args, **spec['timing'])
        size = mixvit.pretrained_cfg['input_size'][:1] + tuple(mixvit.patch_embed.img_size)
    batch = args.batch_size or spec['batch']
    row.update({'timing px': size[-1], 'B': batch})
    mixvit.eval(), backbone.eval()
    x = torch.randn(batch, *size)
    with torch.no_grad():
        speed = interleaved_throughput({'backbone': lambda: backbone(x), 'mixvit': lambda: mixvit(x)},
                                       items_per_call=batch, rounds=args.rounds, min_seconds=args.min_seconds)
    row['latency ratio'] = speed['backbone'] / speed['mixvit']
    if not args.no_train:
        mixvit.train(), backbone.train()
        xs = torch.randn(batch, m, *size)
        targets = torch.randint(mixvit.num_classes, (batch, m))
        mixer = Mixer(num_members=m, generator=torch.Generator().manual_seed(0), **mixvit.mix_cfg)
        mimo_loss = MimoLoss(**mixvit.loss_cfg)
        grid = mixvit.mix_grid(size[1:])

        def mixvit_loss() -> torch.Tensor:
            plan = mixer(batch, grid, progress=0.5)  # the plan is sampled inside the timed step
            return mimo_loss(mixvit(xs, plan), targets, plan.kappas)

        def backbone_loss() -> torch.Tensor:
            return F.cross_entropy(backbone(x), targets[:, 0])

        speed = interleaved_throughput(
            {'backbone': _train_step(backbone, backbone_loss), 'mixvit': _train_step(mixvit, mixvit_loss)},
            items_per_call=batch, rounds=args.rounds, min_seconds=args.min_seconds)
        row['train ratio'] = speed['backbone'] / speed['mixvit']
    return row


def run(args: argparse.Namespace, models: Optional[List[str]] = None) -> List[Dict[str, object]]:
    """Measure every requested pair and print one table; returns its rows."""
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in models or args.models:
        rows.append(_measure(name, args))
        print(f'# {name}: done', flush=True)
    print(f'\nMixViT (M={args.num_members}, source={args.source}, parallel inference) vs backbone. FLOPs at the real '
          'input size (batch 1), timing at "timing px" (batch B); latency / train ratios are time(MixViT) / '
          'time(backbone): alternating rounds, best of each, on a shared machine (noisy).\n')
    print_table(rows, ['model', 'backbone', 'M', 'L+n', 'params ratio', 'FLOPs px', 'GFLOPs backbone', 'FLOPs ratio',
                       'bound (L+nM)/(L+n)', 'target', 'timing px', 'B', 'latency ratio', 'train ratio'])
    return rows
