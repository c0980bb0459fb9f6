"""Which member uses which feature: influence, sharing rates, active filters, feature variance and their plots.

The measures of MixShare (Sun et al., CVPR-W 2022, arXiv:2205.10139 Sec. 2 and App. D; thesis, HAL tel-03952815,
Sec. 3.4.1 and Table A.16) and MixViT (openreview.net/forum?id=pOq1HuMI8Dz, Sec. 4.3.1):

* feature influence on member m: in the input block the L1 norm of each of the encoder ``c_m``'s kernels (one per
  output channel), in the output block the L1 norm of each column of the head's weight ``W_m (K x F)``;
* sharing rate of influence histograms ``h_m``: ``Σ_c min_m h_m[c] / Σ_c max_m h_m[c]`` in [0, 1] (0: no feature
  used by two members, 1: identical use), after normalising each ``h_m`` to sum 1;
* proportion of active filters in the core network (a filter is active when its L1 norm reaches ``t_a`` times the
  largest of its layer, ``t_a = 0.4``);
* feature-variance importance: member m's input runs over a data set while the others stay fixed; the importance of
  channel c at a layer is the variance over the data set, averaged over positions.

Decisions (papers silent): the histograms are normalised to sum 1 before the overlap (``normalize='max'`` rescales
to [0, 1] as MixViT's Fig. 5, ``'none'`` keeps raw norms); for M > 2 the rate is ``Σ min / Σ max`` over all members
(the influence common to every member; for M = 2 the papers' ratio); the feature-variance fixed input is a fixed
image of the data set (``'zeros'`` as an option); the encoder rate is only defined for models with one encoder per
member (MixViT shares its patch embedding, so it has only a classifier rate).

Command line (PNG plots need matplotlib, the ``plots`` extra)::

    python -m timm_mimo.analysis --model mixshare_wrn28_2 --checkpoint run/last.pth.tar --out analysis/
    python -m timm_mimo.analysis --config run/args.yaml --checkpoint run/last.pth.tar --out analysis/ \\
        --data-dir /data/cifar10 --split test     # adds the feature-variance importance
"""
import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = [
    'encoder_influence', 'classifier_influence', 'sharing_rate', 'encoder_sharing_rate', 'classifier_sharing_rate',
    'sharing_rates', 'active_filters', 'feature_variance', 'default_variance_layers', 'plot_influence_histograms',
    'plot_influence_scatter', 'plot_feature_variance', 'analyse', 'main',
]

NORMALIZATIONS = ('sum', 'max', 'none')
ANALYSIS_FILE = 'analysis.json'
# every file the command line may write under --out
OUTPUT_FILES = (ANALYSIS_FILE, 'classifier_influence.png', 'classifier_scatter.png', 'encoder_influence.png',
                'encoder_scatter.png', 'feature_variance.png')
ACTIVE_THRESHOLD = 0.4  # thesis Table A.16 / Sec. 3.3.3: "at least 40% of the highest filter l1-norm"


def _member_heads(model: nn.Module) -> nn.Module:
    """The model's M heads (a ``MemberHeads``: ``weight (M, K, F)``)."""
    from timm_mimo.models._heads import MemberHeads
    heads = model.get_classifier() if hasattr(model, 'get_classifier') else None
    if not isinstance(heads, MemberHeads):
        raise ValueError(f'{type(model).__name__} has no MIMO member heads (get_classifier() is '
                         f'{type(heads).__name__}); the influence analysis needs a timm_mimo model')
    if heads.num_classes == 0:
        raise ValueError('the heads have no classes (reset_classifier(0)): no classifier columns to measure')
    return heads


def classifier_influence(model: nn.Module) -> torch.Tensor:
    """``(M, F)``: L1 norm of every column of every head's weight (MixShare Sec. 2; MixViT Sec. 4.3.1).

    For MixViT the columns are the class-token features read by each member's head. A shared head (one weight for
    every member) gives M identical rows.
    """
    heads = _member_heads(model)
    influence = heads.weight.detach().abs().sum(dim=1).float()
    num_members = getattr(model, 'num_members', influence.shape[0])
    return influence.expand(num_members, -1) if influence.shape[0] == 1 else influence


def encoder_influence(model: nn.Module) -> torch.Tensor:
    """``(M, O)``: L1 norm of each of the O kernels of every member encoder ``c_m`` (MixShare Sec. 2).

    Raises ``ValueError`` for models without one encoder per member (MixViT shares its patch embedding).
    """
    encoders = getattr(model, 'encoders', None)
    weight = getattr(encoders, 'member_weight', None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f'{type(model).__name__} has no per-member encoders (model.encoders.member_weight): the '
                         'encoder sharing rate exists only for MIMO / MixMo / MixShare models')
    return weight.detach().abs().flatten(2).sum(dim=2).float()


def _normalized(influence: torch.Tensor, normalize: str) -> torch.Tensor:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f'normalize must be one of {NORMALIZATIONS}, got {normalize!r}')
    influence = influence.double()
    if normalize == 'sum':
        return influence / influence.sum(dim=1, keepdim=True).clamp_min(1e-300)
    if normalize == 'max':
        return influence / influence.amax(dim=1, keepdim=True).clamp_min(1e-300)
    return influence


def sharing_rate(influence: torch.Tensor, normalize: str = 'sum') -> float:
    """``Σ_c min_m h_m[c] / Σ_c max_m h_m[c]`` of the ``(M, C)`` influence histograms, in [0, 1].

    Args:
        influence: ``(M, C)`` non-negative influence of each of C features on each of M members.
        normalize: ``'sum'`` (each ``h_m`` sums to 1, default), ``'max'`` (each rescaled to max 1) or ``'none'``.
    """
    if influence.ndim != 2 or influence.shape[0] < 2:
        raise ValueError(f'expected influence of shape (M >= 2, C), got {tuple(influence.shape)}')
    if (influence < 0).any():
        raise ValueError('influence must be non-negative (L1 norms)')
    hist = _normalized(influence, normalize)
    total = hist.amax(dim=0).sum()
    if total == 0:
        raise ValueError('every influence is zero: the sharing rate is undefined')
    return float(hist.amin(dim=0).sum() / total)


def encoder_sharing_rate(model: nn.Module, normalize: str = 'sum') -> float:
    """Sharing rate of the input block: the members' encoder-kernel L1 histograms."""
    return sharing_rate(encoder_influence(model), normalize)


def classifier_sharing_rate(model: nn.Module, normalize: str = 'sum') -> float:
    """Sharing rate of the output block ("classifier share rate" of MixShare's Table 1)."""
    return sharing_rate(classifier_influence(model), normalize)


def sharing_rates(model: nn.Module, normalize: str = 'sum') -> Dict[str, float]:
    """``classifier_sharing_rate`` and, for models with one encoder per member, ``encoder_sharing_rate``."""
    rates = {}
    try:
        rates['encoder_sharing_rate'] = encoder_sharing_rate(model, normalize)
    except ValueError:
        pass  # no per-member encoders (MixViT): only the output block is measured
    rates['classifier_sharing_rate'] = classifier_sharing_rate(model, normalize)
    return rates


def _core_convs(model: nn.Module) -> List[nn.Conv2d]:
    """The convolutions of the core network: every ``nn.Conv2d`` but the input encoder.

    MIMO models: the member encoders are not ``nn.Conv2d``, so every ``nn.Conv2d`` is the core network. Plain models:
    the stem conv (``pretrained_cfg['first_conv']``, timm's name for it) is the input encoder and left out, so that a
    plain network and its MIMO version count the same layers (thesis Table A.16 counts the core network only).
    """
    stem = None
    first_conv = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv')
    if isinstance(first_conv, str) and first_conv:
        try:
            stem = model.get_submodule(first_conv)
        except AttributeError:
            stem = None
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m is not stem]


def active_filters(model: nn.Module, threshold: float = ACTIVE_THRESHOLD) -> float:
    """Percentage of active filters in the core network (thesis Table A.16).

    A filter (one output channel's ``C_in x k x k`` kernel) is active when its L1 norm is at least ``threshold``
    times the largest filter L1 norm of its layer; the percentage is over all filters of the core network's conv
    layers: the input encoders (MIMO: the member encoders; a plain model: its stem conv) are not counted, so the
    thesis' Vanilla / CutMix and Cut-MixMo rows compare the same layers.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f'threshold t_a must lie in [0, 1], got {threshold!r}')
    active = total = 0
    for conv in _core_convs(model):
        norms = conv.weight.detach().abs().flatten(1).sum(dim=1)
        active += int((norms >= threshold * norms.max()).sum())
        total += norms.numel()
    if total == 0:
        raise ValueError(f'{type(model).__name__} has no convolution in its core network')
    return 100.0 * active / total


def default_variance_layers(model: nn.Module) -> List[str]:
    """The backbone's feature stages (timm ``feature_info``) after the stem: MixShare's "after each block"."""
    backbone = getattr(model, 'backbone', None)
    info = getattr(backbone, 'feature_info', None)
    if not info:
        raise ValueError(f'{type(model).__name__} has no backbone.feature_info: pass the layers by name')
    encoder_path = getattr(model, 'encoder_path', None)
    modules = [entry['module'] if isinstance(entry, dict) else entry.module for entry in info]
    return [f'backbone.{name}' for name in modules if name and name != encoder_path]


@torch.no_grad()
def feature_variance(model: nn.Module, images: torch.Tensor, fixed: torch.Tensor,
                     layers: Optional[Sequence[str]] = None, batch_size: int = 128) -> Dict[str, torch.Tensor]:
    """Feature-variance importance of every channel for every member (MixShare App. D).

    For member m the inputs are ``x_m = images[n]`` and ``x_j = fixed`` for j ≠ m, combined as at inference
    (``C(Σ_j c_j(x_j))``, :meth:`MimoCNN.forward_features_multi`); the importance of channel c at a layer is
    ``Mean(Var(M_int, dim=0), dim=positions)``.

    Args:
        model: A MIMO CNN (``forward_features_multi``).
        images: ``(N, C, H, W)`` data set, N >= 2.
        fixed: ``(C, H, W)`` the fixed input d.
        layers: Module names (default :func:`default_variance_layers`).
        batch_size: Images per forward.

    Returns:
        ``{layer: (M, channels)}``.
    """
    if not hasattr(model, 'forward_features_multi'):
        raise ValueError(f'{type(model).__name__} has no forward_features_multi: feature variance needs a MIMO CNN')
    if images.ndim != 4 or images.shape[0] < 2 or tuple(fixed.shape) != tuple(images.shape[1:]):
        raise ValueError(f'expected images (N >= 2, C, H, W) and a fixed (C, H, W) input, got '
                         f'{tuple(images.shape)} and {tuple(fixed.shape)}')
    layers = list(layers or default_variance_layers(model))
    num_members = model.num_members
    captured: Dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda mod, inp, out, name=name: captured.__setitem__(name, out.detach().double())) for name in layers]
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    result: Dict[str, List[torch.Tensor]] = {name: [] for name in layers}
    try:
        for m in range(num_members):
            sums: Dict[str, torch.Tensor] = {}
            squares: Dict[str, torch.Tensor] = {}
            for start in range(0, images.shape[0], batch_size):
                chunk = images[start:start + batch_size]
                xs = fixed.expand(chunk.shape[0], num_members, *fixed.shape).clone()
                xs[:, m] = chunk
                model.forward_features_multi(xs)
                for name in layers:
                    out = captured[name]
                    sums[name] = sums.get(name, 0) + out.sum(dim=0)
                    squares[name] = squares.get(name, 0) + out.square().sum(dim=0)
            count = images.shape[0]
            for name in layers:
                mean = sums[name] / count
                variance = (squares[name] - count * mean.square()).clamp_min(0) / (count - 1)  # unbiased, as torch.var
                result[name].append(variance.flatten(1).mean(dim=1) if variance.ndim > 1 else variance)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    return {name: torch.stack(values).float() for name, values in result.items()}


# --------------------------------------------------------------------------------------------------------------------
# Plots (matplotlib, optional)
# --------------------------------------------------------------------------------------------------------------------

def _pyplot() -> Any:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError('the analysis plots need matplotlib: pip install matplotlib (or, in a timm_mimo checkout, '
                          'pip install ".[plots]")') from e
    return plt


MEMBER_COLORS = ('tab:red', 'tab:blue', 'tab:green', 'tab:purple', 'tab:brown', 'tab:pink')


def plot_influence_histograms(influence: torch.Tensor, path: str, title: str = '', normalize: str = 'sum') -> None:
    """The papers' overlapping influence histograms: one bar per feature for each member, overlap shaded.

    Features are ordered by member 0's share of the influence (left: member 0 only, right: the others only).
    """
    plt = _pyplot()
    hist = _normalized(influence, normalize).numpy()
    order = (hist[0] / hist.sum(axis=0).clip(1e-300)).argsort()[::-1]
    hist = hist[:, order]
    positions = range(hist.shape[1])
    fig, ax = plt.subplots(figsize=(max(6.0, hist.shape[1] / 12), 3.2))
    for m, values in enumerate(hist):
        ax.bar(positions, values, width=1.0, color=MEMBER_COLORS[m % len(MEMBER_COLORS)], alpha=0.5,
               label=f'member {m}')
    ax.bar(positions, hist.min(axis=0), width=1.0, color='tab:orange', label='overlap')
    ax.set_xlabel('feature (ordered by member 0 share)')
    ax.set_ylabel('influence (L1, normalised)')
    ax.set_title(f'{title}  sharing rate {sharing_rate(influence, normalize):.3f}'.strip())
    ax.legend(loc='upper center', ncol=hist.shape[0] + 1, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_influence_scatter(influence: torch.Tensor, path: str, title: str = '', members=(0, 1)) -> None:
    """Influence of every feature on member ``a`` vs member ``b``, each rescaled to [0, 1] (MixViT Fig. 5)."""
    plt = _pyplot()
    hist = _normalized(influence, 'max').numpy()
    a, b = members
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(hist[a], hist[b], s=8, alpha=0.6)
    ax.plot([0, 1], [0, 1], color='grey', linewidth=0.8, linestyle='--')
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f'influence on member {a}')
    ax.set_ylabel(f'influence on member {b}')
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_feature_variance(variance: Dict[str, torch.Tensor], path: str, title: str = '') -> None:
    """One panel per layer: each channel's variance importance for every member (MixShare Fig. 6)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(variance), figsize=(4 * len(variance), 3), squeeze=False)
    for ax, (name, values) in zip(axes[0], variance.items()):
        for m, row in enumerate(values.numpy()):
            ax.bar(range(row.shape[0]), row, width=1.0, alpha=0.5, color=MEMBER_COLORS[m % len(MEMBER_COLORS)],
                   label=f'member {m}')
        ax.set_title(f'{name}  rate {sharing_rate(values):.3f}', fontsize=9)
        ax.set_xlabel('channel')
    axes[0][0].set_ylabel('variance w.r.t. the input')
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------------
# Whole analysis and command line
# --------------------------------------------------------------------------------------------------------------------

def analyse(model: nn.Module, out_dir: Optional[str] = None, images: Optional[torch.Tensor] = None,
            fixed: str = 'first', layers: Optional[Sequence[str]] = None, threshold: float = ACTIVE_THRESHOLD,
            plots: bool = True) -> Dict[str, Any]:
    """Every measure the model supports; with ``out_dir`` also ``analysis.json`` and the PNG plots.

    A MIMO model gets the sharing rates and influence plots, any CNN (a plain timm one included, for comparison)
    the active filters.

    Args:
        model: A timm_mimo model.
        out_dir: Where to write the results (created); ``None``: only return them.
        images: ``(N, C, H, W)`` images for the feature-variance importance (skipped when ``None``).
        fixed: The fixed input of the variance analysis: ``'first'`` image or ``'zeros'``.
        layers: Layers of the variance analysis (default: the backbone's stages).
        threshold: t_a of the active filters.
        plots: Write the PNG plots (matplotlib).
    """
    if fixed not in ('first', 'zeros'):
        raise ValueError(f"fixed must be 'first' or 'zeros', got {fixed!r}")
    mimo = hasattr(model, 'num_members')
    if not mimo and not _core_convs(model):
        raise ValueError(f'{type(model).__name__} is neither a MIMO model nor a CNN: nothing to analyse')
    results: Dict[str, Any] = dict(sharing_rates(model)) if mimo else {}
    influences = {}
    if mimo:
        influences['classifier'] = classifier_influence(model)
        if 'encoder_sharing_rate' in results:
            influences['encoder'] = encoder_influence(model)
    if _core_convs(model):
        results['active_filters'] = active_filters(model, threshold)
        results['active_threshold'] = threshold
    variance = None
    if images is not None:
        if not hasattr(model, 'forward_features_multi'):
            raise ValueError(f'the feature-variance analysis needs a MIMO CNN; {type(model).__name__} has no '
                             'forward_features_multi (drop --data-dir)')
        fixed_input = images[0] if fixed == 'first' else torch.zeros_like(images[0])
        data = images[1:] if fixed == 'first' else images
        variance = feature_variance(model, data, fixed_input, layers)
        results['feature_variance_sharing_rate'] = {name: sharing_rate(v) for name, v in variance.items()}
    results['influence'] = {name: value.tolist() for name, value in influences.items()}
    if variance is not None and out_dir is not None:
        results['feature_variance'] = {name: value.tolist() for name, value in variance.items()}
    if out_dir is not None:
        from timm_mimo.cli.run_folder import write_atomically  # each file complete or absent
        if plots and (influences or variance is not None):
            _pyplot()  # matplotlib missing: an ImportError before anything is written
        os.makedirs(out_dir, exist_ok=True)
        if plots:
            for name, value in influences.items():
                write_atomically(os.path.join(out_dir, f'{name}_influence.png'), lambda path, value=value, name=name:
                                 plot_influence_histograms(value, path, f'{name} block'), keep_suffix=True)
                write_atomically(os.path.join(out_dir, f'{name}_scatter.png'), lambda path, value=value, name=name:
                                 plot_influence_scatter(value, path, f'{name} block'), keep_suffix=True)
            if variance is not None:
                write_atomically(os.path.join(out_dir, 'feature_variance.png'),
                                 lambda path: plot_feature_variance(variance, path, 'feature variance'),
                                 keep_suffix=True)

        def write_json(path: str) -> None:
            with open(path, 'w') as f:
                json.dump(results, f, indent=1)
        write_atomically(os.path.join(out_dir, ANALYSIS_FILE), write_json)
    return results


def _parse_kwargs(items: Sequence[str]) -> Dict[str, Any]:
    import ast
    kwargs = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep:
            raise ValueError(f'--model-kwargs expects key=value, got {item!r}')
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def build_parser() -> argparse.ArgumentParser:
    from timm_mimo.cli.args import ArgumentParser  # errors as one line (CliError), as train / validate
    parser = ArgumentParser(prog='timm-mimo-analysis',
                            description='Feature sharing analysis of a timm_mimo model (rates, plots).')
    parser.add_argument('--config', default='', help="a training run's args.yaml (model, model_kwargs, data flags)")
    parser.add_argument('--model', default=None, help='timm model name')
    parser.add_argument('--model-kwargs', nargs='*', default=None, metavar='KEY=VALUE')
    parser.add_argument('--num-classes', type=int, default=None)
    parser.add_argument('--checkpoint', default='', help='weights (train.py checkpoint or state dict)')
    parser.add_argument('--use-ema', action='store_true', help="the checkpoint's EMA weights (refused without them)")
    parser.add_argument('--out', required=True, help='output folder (analysis.json and PNG plots)')
    parser.add_argument('--no-plots', action='store_true', help='skip the PNG plots (no matplotlib needed)')
    parser.add_argument('--threshold', type=float, default=ACTIVE_THRESHOLD, help='t_a of the active filters')
    parser.add_argument('--data-dir', default=None, help='image data for the feature-variance importance')
    parser.add_argument('--dataset', default=None, help="timm dataset name ('' = image folder)")
    parser.add_argument('--split', default=None, help='split of --data-dir (e.g. test)')
    parser.add_argument('--num-images', type=int, default=512, help='images of the variance analysis')
    parser.add_argument('--fixed-input', default='first', choices=('first', 'zeros'))
    parser.add_argument('--layers', nargs='*', default=None,
                        help='variance layers (default: backbone stages); needs --data-dir')
    return parser


def _load_config(path: str) -> Dict[str, Any]:
    import yaml
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f'cannot read --config {path!r}: {" ".join(str(exc).split())}') from None
    if not isinstance(config, dict):
        raise ValueError(f'--config {path!r} must be a mapping')
    return {str(key).replace('-', '_'): value for key, value in config.items()}


def _create_model(args: argparse.Namespace, config: Dict[str, Any]) -> Tuple[nn.Module, Optional[List[str]]]:
    """The model with the checkpoint's weights (read and checked before it is built) and the class names of its
    outputs (the checkpoint's or the --config's, ``None`` when neither records them). Without ``--config`` the run's
    arguments come from the ``args.yaml`` beside the checkpoint, else from the checkpoint (timm_mimo's and timm's
    train.py store them), so ``--model cut_mixmo --checkpoint run/last.pth.tar`` rebuilds the run's model."""
    import timm

    import timm_mimo  # noqa: F401  (registers the models)
    from timm_mimo.checkpoint import run_train_args
    from timm_mimo.cli.args import CliError, one_line
    from timm_mimo.cli.checkpoint import check_checkpoint_model, checkpoint_weights, read_checkpoint
    state = None
    if args.checkpoint:  # read and checked before the model is built
        state = read_checkpoint(args.checkpoint)
        if not config:
            run = run_train_args(args.checkpoint, state)
            if not args.model or run.get('model') == args.model:
                config = {str(key).replace('-', '_'): value for key, value in run.items()}
    elif args.use_ema:
        raise CliError('--use-ema needs --checkpoint (the file holding the EMA weights)')
    name = args.model or config.get('model')
    if not name:
        raise ValueError('--model is required (or a --config with a model)')
    if ':' not in name and not timm.is_model(name):
        raise ValueError(f'unknown model {name!r} (see timm.list_models())')
    kwargs = dict(config.get('model_kwargs') or {})
    if args.model_kwargs is not None:
        kwargs.update(_parse_kwargs(args.model_kwargs))
    for key in ('num_classes', 'in_chans', 'num_members'):
        value = getattr(args, key, None) if getattr(args, key, None) is not None else config.get(key)
        if value is not None:
            kwargs[key] = value
    if config.get('input_size') and getattr(args, 'in_chans', None) is None:
        kwargs['in_chans'] = config['input_size'][0]
    weights = None
    if state is not None:
        check_checkpoint_model(state, args.checkpoint, name, dict(config.get('model_kwargs') or {},
                                                                   **_parse_kwargs(args.model_kwargs or [])))
        weights = checkpoint_weights(state, args.checkpoint, args.use_ema)
    try:
        model = timm.create_model(name, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as exc:
        given = ' '.join(f'{key}={value}' for key, value in kwargs.items())
        raise CliError(f'cannot create model {name!r} with --model-kwargs / --config arguments {given} '
                       f'({one_line(exc, 200)})') from None
    if weights is not None:
        from timm.models import clean_state_dict
        try:
            model.load_state_dict(clean_state_dict(weights))
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CliError(f'--checkpoint {args.checkpoint!r} does not fit model {name!r} ({one_line(exc, 240)}); give '
                           "the run's args.yaml as --config") from None
    return model.eval(), _class_names(state, config)


def _class_names(state: Any, config: Dict[str, Any]) -> Optional[List[str]]:
    from timm_mimo.cli.checkpoint import checkpoint_class_names
    names = checkpoint_class_names(state) or config.get('class_names')
    return [str(name) for name in names] if names else None


def _check_layers(model: nn.Module, layers: Optional[Sequence[str]]) -> None:
    from timm_mimo.cli.args import CliError
    for name in layers or []:
        try:
            model.get_submodule(name)
        except AttributeError:
            try:
                known = ', '.join(default_variance_layers(model))
            except ValueError:
                known = 'module names of the model'
            raise CliError(f'--layers {name!r} is not a module of {type(model).__name__}; give layers such as '
                           f'{known}') from None


def _load_images(args: argparse.Namespace, config: Dict[str, Any], model: nn.Module,
                 class_names: Optional[List[str]] = None) -> torch.Tensor:
    """``--num-images`` images spread over the split, which must hold only classes of ``class_names`` (by name)."""
    from timm.data import resolve_data_config

    from timm_mimo.data import apply_class_names, create_image_transform, open_dataset
    data_args = {k: config.get(k) for k in ('input_size', 'img_size', 'mean', 'std', 'interpolation')}
    in_chans = getattr(model, 'in_chans', None)
    data_args['in_chans'] = in_chans
    if in_chans is not None and data_args['input_size'] is None and data_args['img_size'] is None:
        data_args['input_size'] = (in_chans, *model.pretrained_cfg['input_size'][1:])  # the model's own channels
    data_config = resolve_data_config({k: v for k, v in data_args.items() if v is not None}, model=model)
    transform = create_image_transform(data_config, False, config.get('crop_pad'))
    dataset_name = args.dataset if args.dataset is not None else config.get('dataset', '')
    split = args.split or config.get('val_split') or 'validation'
    if args.num_images < 3:
        raise ValueError(f'--num-images must be >= 3, got {args.num_images}')
    dataset = open_dataset(dataset_name or '', args.data_dir, split, False, False, transform)
    apply_class_names(dataset, class_names, f'split {split!r} of {args.data_dir!r}')
    count = min(args.num_images, len(dataset))
    # an even spread over the split (folder data sets list the images class by class)
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    return torch.stack([dataset[i][0] for i in indices])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point in the top-level handler (:func:`timm_mimo.cli.errors.handle_errors`): see :func:`_main`."""
    from timm_mimo.cli.errors import handle_errors
    return handle_errors(_main)(argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    """Writes ``analysis.json`` (+ PNGs) under ``--out``; bad input is one line on stderr, status 2,
    nothing written; SIGINT / SIGTERM one line, status 130 / 143, every file complete or absent."""
    from timm_mimo.cli.args import CliError
    from timm_mimo.cli.run_folder import Interrupted, SignalGuard, check_outputs_are_not_inputs
    from timm_mimo.data import DataError
    with SignalGuard():
        try:
            args = build_parser().parse_args(argv)
            if args.layers and not args.data_dir:
                raise CliError(f'--layers {" ".join(args.layers)}: the layers of the feature-variance analysis, which '
                               'needs --data-dir')
            if not 0.0 <= args.threshold <= 1.0:
                raise CliError(f'--threshold {args.threshold!r}: must be in [0, 1]')
            check_outputs_are_not_inputs({'--out': [os.path.join(args.out, name) for name in OUTPUT_FILES]},
                                         {'--checkpoint': args.checkpoint, '--config': args.config})
            if os.path.exists(args.out) and not os.path.isdir(args.out):
                raise CliError(f'--out {args.out!r} is a file; give a folder')
            config = _load_config(args.config) if args.config else {}
            model, class_names = _create_model(args, config)
            _check_layers(model, args.layers)
            images = _load_images(args, config, model, class_names) if args.data_dir else None
            results = analyse(model, args.out, images, args.fixed_input, args.layers, args.threshold,
                              plots=not args.no_plots)
        except (CliError, DataError, ValueError, ImportError, RuntimeError, OSError) as exc:
            print(f'error: {" ".join(str(exc).split())}', file=sys.stderr)
            return 2
        except (KeyboardInterrupt, Interrupted) as exc:
            name = exc.name if isinstance(exc, Interrupted) else 'SIGINT'
            print(f'error: interrupted ({name}); every file written under --out is complete', file=sys.stderr)
            return exc.exit_code if isinstance(exc, Interrupted) else 130
    for key, value in results.items():
        if isinstance(value, float):
            print(f'{key}: {value:.4f}')
        elif key == 'feature_variance_sharing_rate':
            for name, rate in value.items():
                print(f'feature variance sharing rate {name}: {rate:.4f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
