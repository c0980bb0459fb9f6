"""Save, push, load and export timm_mimo models through timm's Hugging Face Hub format, with model cards.

A folder written by :func:`save_pretrained` holds ``model.safetensors``, a timm ``config.json`` (architecture, model
args such as ``backbone`` / ``num_members`` / ``inference``, pretrained cfg) and a ``README.md`` model card, so both of
these rebuild the model offline::

    timm.create_model('local-dir:/path/to/folder', pretrained=True)
    timm_mimo.hub.load_pretrained('/path/to/folder')

and the same folder pushed with :func:`push_to_hub` loads with ``timm.create_model('hf-hub:<user>/<repo>',
pretrained=True)`` after ``import timm_mimo``.

Every failed pretrained download, wherever it happens (a registered name, a generic name's backbone, ``hf-hub:``),
is explained by :func:`timm_mimo.pretrained.offline_message` (re-exported here): the repository and file the weights
live in, how to load a local copy and the command that fetches it once the network is back.

Command line (a ``train.py`` checkpoint, timm_mimo's or timm's, to a Hub folder with its card; the recipes; timm's own
scripts with the timm_mimo models registered)::

    python -m timm_mimo export --checkpoint run/model_best.pth.tar [--use-ema] [--args run/args.yaml] \\
        --out folder [--results results.json] [--dataset-name cifar10]
    python -m timm_mimo configs
    python -m timm_mimo run validate.py --model cut_mixmo_wrn28_10 ...
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from timm.models import create_model, save_for_hf

from timm_mimo.pretrained import (  # re-exported: part of the hub's documented surface
    WEIGHTS_FILE,
    PretrainedDownloadError,
    download_command,
    has_pretrained_source,
    hub_errors_with_offline_hint,
    no_weights_message,
    offline_message,
    pretrained_weights,
)

__all__ = ['save_pretrained', 'push_to_hub', 'load_pretrained', 'export_checkpoint', 'model_card',
           'offline_message', 'no_weights_message', 'pretrained_weights', 'has_pretrained_source',
           'hub_errors_with_offline_hint', 'download_command', 'INSTALL_LINE', 'PretrainedDownloadError',
           'dataset_name', 'citation', 'calibration_record', 'read_checkpoint', 'training_script', 'backbone_hub_id',
           'initialisation', 'mimo_recipe', 'model_complexity', 'usage_snippet']

INSTALL_LINE = 'pip install .  # in a checkout of the timm_mimo source (not published on PyPI)'

# method -> (paper title, paper id): the method a model trains with, for the card's tags and citations
METHOD_PAPERS: Dict[str, Sequence[str]] = {
    'mimo': ('Training independent subnetworks for robust prediction (MIMO)', 'arXiv:2010.06610'),
    'linear_mixmo': ('MixMo: Mixing Multiple Inputs for Multiple Outputs via Deep Subnetworks', 'arXiv:2103.06132'),
    'cut_mixmo': ('MixMo: Mixing Multiple Inputs for Multiple Outputs via Deep Subnetworks', 'arXiv:2103.06132'),
    'cutmix_only_mixmo': ('MixMo: Mixing Multiple Inputs for Multiple Outputs via Deep Subnetworks',
                          'arXiv:2103.06132'),
    'mixshare': ('Towards efficient feature sharing in MIMO architectures', 'arXiv:2205.10139'),
    'mixvit': ('Reconciling feature sharing and multiple predictions with MIMO vision transformers',
               'openreview.net/forum?id=pOq1HuMI8Dz'),
}
_VIT_BASELINE = ('Reconciling feature sharing and multiple predictions with MIMO vision transformers '
                 '(naive MIMO / MixMo transformer baselines)', 'openreview.net/forum?id=pOq1HuMI8Dz')


# --------------------------------------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------------------------------------

def _is_mimo(model: nn.Module) -> bool:
    return hasattr(model, 'num_members') and hasattr(model, 'forward_members')


def model_method(model: nn.Module) -> str:
    """The MIMO method a model implements (``'cut_mixmo'``, ``'mixvit'``, ``'mimo_vit'`` ...)."""
    cls_name = type(model).__name__.lower()
    if 'mixvit' in cls_name:
        return 'mixvit'
    if 'mixshare' in cls_name:
        return 'mixshare'
    return str(getattr(model, 'method', None) or cls_name)


def _method_paper(method: str) -> Sequence[str]:
    if method in METHOD_PAPERS:
        return METHOD_PAPERS[method]
    if method.endswith('_vit'):
        return _VIT_BASELINE
    return METHOD_PAPERS['cut_mixmo']


def runtime_model_args(model: nn.Module) -> Dict[str, Any]:
    """Construction arguments a model may have changed since ``create_model``, for config.json.

    ``backbone`` and ``num_members`` are recorded even when the defaults were used (a later default cannot change a
    saved model), and the settable inference options (``inference``, MixViT's ``single_member`` /
    ``alternating_seed``) as they are now, so ``model.inference = 'sum'`` survives the reload.
    """
    args: Dict[str, Any] = {}
    if not _is_mimo(model):
        return args
    args['num_members'] = int(model.num_members)
    backbone = getattr(model, 'backbone_name', None)
    if isinstance(backbone, str):
        args['backbone'] = backbone
    for key in ('inference', 'single_member', 'alternating_seed'):
        value = getattr(model, key, None)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            args[key] = value
    return args


# BibTeX of each paper a method comes from (author lists as published)
BIBTEX: Dict[str, str] = {
    'arXiv:2010.06610': """@inproceedings{havasi2021mimo,
  title     = {Training independent subnetworks for robust prediction},
  author    = {Havasi, Marton and Jenatton, Rodolphe and Fort, Stanislav and Liu, Jeremiah Zhe and Snoek, Jasper and
               Lakshminarayanan, Balaji and Dai, Andrew M. and Tran, Dustin},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2021},
  eprint    = {2010.06610},
  archivePrefix = {arXiv}
}""",
    'arXiv:2103.06132': """@inproceedings{rame2021mixmo,
  title     = {MixMo: Mixing Multiple Inputs for Multiple Outputs via Deep Subnetworks},
  author    = {Ram{\\'e}, Alexandre and Sun, R{\\'e}my and Cord, Matthieu},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021},
  eprint    = {2103.06132},
  archivePrefix = {arXiv}
}""",
    'arXiv:2205.10139': """@inproceedings{sun2022mixshare,
  title     = {Towards efficient feature sharing in MIMO architectures},
  author    = {Sun, R{\\'e}my and Ram{\\'e}, Alexandre and Masson, Cl{\\'e}ment and Thome, Nicolas and Cord, Matthieu},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR) Workshops},
  year      = {2022},
  eprint    = {2205.10139},
  archivePrefix = {arXiv}
}""",
    'openreview.net/forum?id=pOq1HuMI8Dz': """@misc{mixvit,
  title        = {Reconciling feature sharing and multiple predictions with {MIMO} vision transformers},
  howpublished = {OpenReview, \\url{https://openreview.net/forum?id=pOq1HuMI8Dz}},
  note         = {MixViT; also Chapter 4 of R. Sun's thesis below}
}
@phdthesis{sun2022thesis,
  title  = {Content combination strategies for Image Classification},
  author = {Sun, R{\\'e}my},
  school = {Sorbonne Universit{\\'e}},
  year   = {2022},
  note   = {HAL tel-03952815}
}""",
}

# train.py arguments that describe the recipe (the rest is logistics: paths, workers, logging, devices); the MIMO
# mixing flags are not among them: the card shows the mixing in effect (:func:`mimo_recipe`) instead
RECIPE_KEYS = (
    'model', 'model_kwargs', 'num_classes', 'num_members', 'input_size', 'img_size', 'in_chans',
    'mean', 'std', 'crop_pad', 'hflip', 'aa', 'epochs', 'batch_size', 'batch_repeat', 'mixup', 'cutmix',
    'smoothing', 'drop', 'drop_path', 'opt', 'lr', 'momentum', 'weight_decay', 'l2', 'sched', 'warmup_epochs',
    'decay_milestones', 'decay_rate', 'sched_on_updates', 'model_ema', 'model_ema_decay', 'amp', 'amp_dtype', 'seed',
)
# keys shown only when the setting they depend on is in effect: key -> predicate on the run's arguments
_RECIPE_CONDITIONS = {
    'model_ema_decay': lambda a: bool(a.get('model_ema')),
    'amp_dtype': lambda a: bool(a.get('amp')),
    'batch_repeat': lambda a: (a.get('batch_repeat') or 1) > 1,
    'decay_milestones': lambda a: a.get('sched') == 'multistep',
    'decay_rate': lambda a: a.get('sched') in ('step', 'multistep', 'plateau'),
    'momentum': lambda a: not any(name in str(a.get('opt', 'sgd')).lower() for name in ('adam', 'lamb', 'lion')),
}
# what :func:`training_script` looks for: timm-mimo-train records these flags, timm's train.py has none of them
_TIMM_MIMO_TRAIN_KEYS = ('batch_repeat', 'mimo_mix_prob')
TIMM_MIMO_TRAIN = 'timm-mimo-train'
TIMM_TRAIN = "timm's train.py"

# BibTeX of timm, cited by every card (the library the models are built in)
TIMM_BIBTEX = """@misc{rw2019timm,
  author       = {Wightman, Ross},
  title        = {PyTorch Image Models},
  year         = {2019},
  publisher    = {GitHub},
  journal      = {GitHub repository},
  doi          = {10.5281/zenodo.4414861},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}"""

# validate.py columns in the card's model-index: (column, metric type, metric name)
MODEL_INDEX_METRICS = (
    ('top1', 'accuracy', 'Top-1 accuracy (%)'),
    ('top5', 'top_5_accuracy', 'Top-5 accuracy (%)'),
    ('loss', 'nll', 'Negative log-likelihood (nats)'),
    ('ece', 'ece', 'Expected calibration error, 15 bins (%)'),
)

# validate.py columns shown in a card: (column, what it is, unit)
CARD_METRICS = (
    ('top1', 'top-1 accuracy, ensemble', '%'),
    ('top5', 'top-5 accuracy, ensemble', '%'),
    ('member_top1', 'top-1 accuracy, mean of the members', '%'),
    ('loss', 'negative log-likelihood (NLL), ensemble', 'nats'),
    ('nll_c', 'NLL after temperature scaling cross-fitted on two halves of the split', 'nats'),
    ('ece', 'expected calibration error, 15 bins', '%'),
    ('brier', 'Brier score, summed over classes', 'in [0, 2]'),
    ('aurc', 'area under the risk-coverage curve', 'in [0, 1]'),
    ('loss_ts', "NLL with the model's temperature", 'nats'),
    ('ece_ts', "ECE with the model's temperature", '%'),
    ('d_re', 'ratio-error diversity of the members', 'ratio'),
    ('disagreement', 'share of images on which two members disagree', 'in [0, 1]'),
    ('encoder_sharing_rate', "sharing rate of the members' encoders", 'in [0, 1]'),
    ('classifier_sharing_rate', "sharing rate of the members' classifiers", 'in [0, 1]'),
    ('c_mean_top1', 'top-1 accuracy under the common corruptions, mean', '%'),
    ('ood_msp_auroc', 'OOD detection AUROC from max-softmax', '%'),
)

_FOLDER_READERS = ('', 'folder', 'imagefolder', 'image_folder', 'torch/folder', 'torch/image_folder')


def dataset_name(dataset: Optional[str]) -> Optional[str]:
    """timm's ``--dataset`` value as a data set name: ``'torch/cifar10'`` -> ``'cifar10'``, ``'hfds/uoft-cs/cifar10'``
    -> ``'uoft-cs/cifar10'``; an image folder (``''``) has no name (``None``): its path is not a name."""
    if not dataset or str(dataset).lower() in _FOLDER_READERS:
        return None
    prefix, sep, rest = str(dataset).partition('/')
    return rest if sep and rest else str(dataset)


def citation(method: str) -> Optional[str]:
    """The BibTeX of the paper a timm_mimo method comes from."""
    return BIBTEX.get(_method_paper(method)[1])


def card_input_size(model: nn.Module, train_args: Optional[Dict[str, Any]] = None) -> tuple:
    """The input size (C, H, W) the model was built / trained for: a fixed-size model's own (a ViT built at 64 px says
    64), else the training run's ``input_size`` / ``img_size``, else the model's nominal size."""
    from timm.models import get_model_input_config
    current = get_model_input_config(model)
    train_args = train_args or {}
    if not current['fixed_input_size']:
        if train_args.get('input_size'):
            return tuple(train_args['input_size'])
        if train_args.get('img_size'):
            size = train_args['img_size']
            size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
            return (train_args.get('in_chans') or current['input_size'][0], *size)
    return tuple(current['input_size'])


def _format_metric(value: Any) -> str:
    return f'{value:.4g}' if isinstance(value, float) else str(value)


def training_script(train_args: Optional[Dict[str, Any]]) -> Optional[str]:
    """Which script trained the weights: ``'timm-mimo-train'`` (its ``args.yaml`` records the MIMO flags),
    ``"timm's train.py"`` (arguments without them), ``None`` when no training arguments are known."""
    if not train_args:
        return None
    return TIMM_MIMO_TRAIN if any(key in train_args for key in _TIMM_MIMO_TRAIN_KEYS) else TIMM_TRAIN


def backbone_hub_id(model: nn.Module) -> Optional[str]:
    """The Hub repository of the published weights the model starts from with ``pretrained=True``: its own pretrained
    cfg's (MixViT: the backbone's checkpoint), else its backbone's timm default (a generic MIMO CNN)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('hf_hub_id') and not str(cfg.get('hf_hub_id')).startswith(('local-dir', '/')):
        return str(cfg['hf_hub_id'])
    backbone = getattr(model, 'backbone_name', None)
    if isinstance(backbone, str):
        import timm
        try:
            backbone_cfg = timm.models.get_pretrained_cfg(backbone)
        except (RuntimeError, ValueError, KeyError):
            return None
        if backbone_cfg is not None and backbone_cfg.hf_hub_id:
            return str(backbone_cfg.hf_hub_id)
    return None


def initialisation(model: nn.Module, train_args: Dict[str, Any]) -> Tuple[str, Optional[str]]:
    """Where the run's weights started: (a sentence for the card, the Hub id of the published backbone checkpoint or
    ``None``). ``--pretrained-path`` stands in for the published weights (timm's meaning), so it names them too."""
    published = backbone_hub_id(model)
    if train_args.get('pretrained_path'):
        name = Path(str(train_args['pretrained_path'])).name
        extra = f', in place of the published `{published}`' if published else ''
        return f'the backbone checkpoint file `{name}` (`--pretrained-path`{extra})', published
    if train_args.get('pretrained'):
        if published:
            return f'the published backbone checkpoint [`{published}`](https://huggingface.co/{published})', published
        return 'the published pretrained weights of the model', None
    if train_args.get('initial_checkpoint'):
        return f'the checkpoint `{Path(str(train_args["initial_checkpoint"])).name}` (`--initial-checkpoint`)', None
    return 'scratch (random initialisation)', None


def mimo_recipe(model: nn.Module, train_args: Dict[str, Any]) -> List[Tuple[str, str]]:
    """The MIMO training in effect for a timm-mimo-train run: the flags it set, the model's ``mix_cfg`` /
    ``loss_cfg`` for the rest (resolved as the run resolved them, :meth:`timm_mimo.task.MimoTask.from_model`)."""
    from timm_mimo.task import MimoTask
    names = ('mix', 'mix_prob', 'mix_prob_decay', 'mix_alpha', 'single_source_end', 'loss_root', 'input_repeat',
             'mimo_cutmix', 'mimo_mixup')
    overrides = {key: train_args.get(key) for key in names}
    task = MimoTask.from_model(model, smoothing=train_args.get('smoothing'),
                               mimo_mix_prob=train_args.get('mimo_mix_prob', 0.5), **overrides)
    mixer, root = task.mixer, task.criterion.root
    rows = [('mixing', f'`{mixer.kind}` masks'),
            ('κ', 'fixed at 1/M' if mixer.alpha is None else f'~ Beta(α, α), α = {mixer.alpha:g}'
             if model.num_members == 2 else f'~ Dirichlet(α), α = {mixer.alpha:g}'),
            ('p (mixed batch probability)', f'{mixer.prob:g}' + (
                ', descending to 0 over the last twelfth of training' if mixer.prob_decay else '')),
            ('r (loss-weight root)', 'none (equal weights)' if root is None or root == float('inf') else f'{root:g}'),
            ('ρ (input repetition)', f'{task.input_repeat:g}')]
    if mixer.single_source_end:
        rows.append(('single-source end', 'on (the last batches take all tokens from one input)'))
    if task.pixel_mix is not None:
        pixel = [f'CutMix α = {train_args["mimo_cutmix"]:g}' if train_args.get('mimo_cutmix') else '',
                 f'Mixup α = {train_args["mimo_mixup"]:g}' if train_args.get('mimo_mixup') else '']
        rows.append(('pixel mixing of every member input', ' + '.join(p for p in pixel if p)
                     + f', probability {train_args.get("mimo_mix_prob", 0.5):g}'))
    return rows


def model_complexity(model: nn.Module, input_size: Sequence[int]) -> Tuple[int, Optional[float]]:
    """Parameters and GMACs of one image of ``input_size`` (C, H, W) through the model in eval mode (FLOPs counted by
    ``torch.utils.flop_counter`` on one forward, halved: a multiply-accumulate is two FLOPs); ``None`` GMACs when
    the forward fails."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    num_params = sum(p.numel() for p in model.parameters())
    param = next(model.parameters(), None)
    training = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(1, *input_size, device=param.device if param is not None else 'cpu'))
        gmacs = counter.get_total_flops() / 2 / 1e9
    except (RuntimeError, ValueError, TypeError, AssertionError):
        gmacs = None
    finally:
        for module, mode in training:
            module.training = mode
    return num_params, gmacs


def usage_snippet(model: nn.Module, name: str) -> List[str]:
    """The card's Python usage: load the model, one image with PIL, the model's data config and eval transform,
    softmax, top-5 with the label names (runs as written once ``image.jpg`` exists)."""
    label_names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    num_classes = getattr(model, 'num_classes', 0)
    if isinstance(label_names, (list, tuple)) and len(label_names) == num_classes:
        names_line = "label_names = model.pretrained_cfg['label_names']  # the class of each output"
        name_of = 'label_names[index]'
    elif label_names:
        names_line = "label_names = {int(k): v for k, v in model.pretrained_cfg['label_names'].items()}"
        name_of = 'label_names.get(index, index)'
    else:
        names_line = 'label_names = [str(index) for index in range(model.num_classes)]  # no class names recorded'
        name_of = 'label_names[index]'
    in_chans = card_input_size(model)[0]
    mode = 'L' if in_chans == 1 else 'RGB'
    mimo = _is_mimo(model)
    lines = ['import timm', 'import torch', 'from PIL import Image', '', 'import timm_mimo  # registers the models',
             '', f"model = timm.create_model('{name}', pretrained=True).eval()",
             'config = timm.data.resolve_model_data_config(model)',
             'transform = timm.data.create_transform(**config, is_training=False)',
             f"image = transform(Image.open('image.jpg').convert('{mode}')).unsqueeze(0)  # (1, C, H, W)",
             'with torch.no_grad():',
             '    logits = model(image)  # (1, K)' + (': the ensemble, member logits averaged' if mimo else '')]
    if mimo:
        lines.append("    members = model.forward_members(image)  # (1, M, K): every member's logits")
    lines += ['probabilities = logits.softmax(dim=-1)[0]', names_line,
              'for probability, index in zip(*probabilities.topk(min(5, model.num_classes))):',
              '    index = int(index)', f"    print(f'{{{name_of}}}: {{100 * probability:.1f}} %')"]
    return lines


def _model_index(model_name: str, results: Dict[str, Any], data_name: Optional[str]) -> list:
    """The card's ``model-index`` (machine-readable metrics) from validate.py's results."""
    from huggingface_hub import EvalResult
    evaluated = dataset_name(results.get('dataset')) or data_name
    entries = []
    for key, metric_type, metric_name in MODEL_INDEX_METRICS:
        value = results.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            entries.append(EvalResult(task_type='image-classification', task_name='Image Classification',
                                      dataset_type=evaluated or 'imagefolder', dataset_name=evaluated or 'image folder',
                                      dataset_split=results.get('split'), metric_type=metric_type,
                                      metric_name=metric_name, metric_value=round(float(value), 4)))
    return entries


def model_card(model: nn.Module, repo_id: Optional[str] = None, train_args: Optional[Dict[str, Any]] = None,
               results: Optional[Dict[str, Any]] = None, install: str = INSTALL_LINE,
               dataset: Optional[str] = None) -> 'Any':
    """A ``huggingface_hub.ModelCard`` that describes the run that made the weights.

    Args:
        model: The model (its architecture, method, backbone, M, input size and temperature fill the card).
        repo_id: The Hub repository (for the ``hf-hub:`` line); a ``local-dir:`` line is shown without it.
        train_args: ``train.py``'s ``args.yaml`` as a dict: which script trained the weights
            (:func:`training_script`), where they started (:func:`initialisation`), the data, the settings in effect
            and, for a timm-mimo-train run, the MIMO mixing resolved from the model's defaults (:func:`mimo_recipe`).
        results: ``validate.py``'s results (JSON): the metrics with their data set, split and units (also as the
            card's ``model-index``).
        install: The install line shown before ``import timm_mimo``.
        dataset: The training data set's name (default: from ``train_args['dataset']``; an image folder has none).
    """
    from huggingface_hub import ModelCard, ModelCardData

    from timm_mimo.calibration import get_temperature, temperature_heads
    cfg = dict(getattr(model, 'pretrained_cfg', {}) or {})
    architecture = cfg.get('architecture') or type(model).__name__
    train_args = dict(train_args or {})
    results = dict(results or {})
    mimo = _is_mimo(model)
    script = training_script(train_args)
    mimo_trained = mimo and script != TIMM_TRAIN
    method = model_method(model) if mimo else architecture
    paper_title, paper_id = _method_paper(method) if mimo else ('', cfg.get('paper_ids') or '')
    tags = ['timm_mimo', 'image-classification', architecture]
    if mimo_trained:
        tags[1:1] = ['mimo', method]
        if paper_id.startswith('arXiv:'):
            tags.append('arxiv:' + paper_id.split(':', 1)[1])
    data_name = dataset or dataset_name(train_args.get('dataset'))
    start, base_model = initialisation(model, train_args) if train_args else (None, None)
    title = repo_id.split('/')[-1] if repo_id else architecture
    metrics_index = _model_index(title, results, data_name)
    card_data = ModelCardData(library_name='timm', license=cfg.get('license') or 'apache-2.0',
                              tags=list(dict.fromkeys(tags)), pipeline_tag='image-classification',
                              datasets=[data_name] if data_name else None, base_model=base_model,
                              model_name=title if metrics_index else None, eval_results=metrics_index or None)
    name = f'hf-hub:{repo_id}' if repo_id else 'local-dir:/path/to/this/folder'
    input_size = card_input_size(model, train_args)
    num_params, gmacs = model_complexity(model, input_size)
    temperature = get_temperature(model) if temperature_heads(model) else 1.0
    members = f', {model.num_members} members' if mimo else ''
    if not mimo:
        summary = f'A timm image classifier, `{architecture}`' + (f', trained by {script}.' if script else '.')
    elif script == TIMM_TRAIN:
        summary = (f'The timm_mimo architecture `{architecture}` ({model.num_members} member heads) trained by '
                   "timm's train.py as a **single-input network**: every member saw the same image, with no mixing "
                   'and no member loss. It is not a MIMO-trained ensemble (timm-mimo-train trains one).')
    elif script == TIMM_MIMO_TRAIN:
        summary = (f'A multi-input multi-output (MIMO) ensemble in timm, trained by timm-mimo-train: `{architecture}`, '
                   f'method `{method}`{members}.')
    else:
        summary = (f'A multi-input multi-output (MIMO) ensemble architecture in timm: `{architecture}`, method '
                   f'`{method}`{members} (no training record given with these weights).')
    lines = [f'# {title}', '', summary, '', '## Usage', '',
             'The model needs the `timm_mimo` package (it registers the architecture with timm):', '',
             '```bash', install, '```', '', '```python', *usage_snippet(model, name), '```', '',
             '## Model details', '', f'- architecture: `{architecture}`']
    if mimo:
        lines.append(f'- method: `{method}`' + ('' if mimo_trained else ' (architecture only: trained single-input)'))
        lines.append(f'- members (M): {model.num_members}')
        if getattr(model, 'backbone_name', None):
            lines.append(f'- backbone: `{model.backbone_name}` (timm)')
        if getattr(model, 'inference', None):
            lines.append(f'- inference: `{model.inference}`')
    lines += [f'- parameters: {num_params / 1e6:.2f} M']
    if gmacs is not None:
        lines.append(f'- GMACs: {gmacs:.3g} (one {input_size[1]}x{input_size[2]} image)')
    lines += [f'- classes: {getattr(model, "num_classes", "?")}', f'- input size (C, H, W): {input_size}']
    described = (getattr(model, 'pretrained_cfg', None) or {}).get('label_descriptions') or {}
    if described:  # the release's readable class names (config.json label_descriptions holds them all)
        shown = [f'{name} ({text})' for name, text in list(described.items())[:5]]
        lines.append(f'- class names: {", ".join(shown)}{", ..." if len(described) > 5 else ""}')
    if temperature != 1.0:
        lines.append(f'- temperature: {temperature:.4g} (every member\'s logits are divided by it; see Calibration)')
    if paper_title:
        lines += [f'- paper: {paper_title}, {paper_id}']
    if train_args:
        split = train_args.get('train_split')
        data = f'{data_name}' if data_name else 'an image folder (no data set name recorded)'
        lines += ['', '## Training', '', f'- script: {script}'
                  + (' (single-input: no MIMO mixing, no member loss)' if script == TIMM_TRAIN and mimo else ''),
                  f'- initialised from {start}', f'- data: {data}' + (f', split `{split}`' if split else '')]
        if mimo and script == TIMM_MIMO_TRAIN:
            rows = mimo_recipe(model, train_args)
            lines += ['- MIMO training (the flags of the run, the model\'s defaults for those it left unset):', '',
                      '| setting | value |', '|---|---|'] + [f'| {k} | {v} |' for k, v in rows]
        lines += ['', '- recipe (the `train.py` arguments in effect):', '']
        recipe = [(key, train_args[key]) for key in RECIPE_KEYS
                  if train_args.get(key) not in (None, '', [], {}, False)
                  and _RECIPE_CONDITIONS.get(key, lambda a: True)(train_args)]
        lines += ['| arg | value |', '|---|---|'] + [f'| {k} | `{v}` |' for k, v in recipe]
    shown = [(key, what, unit) for key, what, unit in CARD_METRICS
             if isinstance(results.get(key), (int, float)) and not isinstance(results.get(key), bool)]
    if shown:
        evaluated = dataset_name(results.get('dataset')) or data_name
        where = f'**{evaluated}**' if evaluated else 'an image folder'
        split = f', split `{results["split"]}`' if results.get('split') else ''
        images = f' ({results["num_images"]} images)' if results.get('num_images') else ''
        lines += ['', '## Results', '', f'Measured by `timm-mimo-validate` on {where}{split}{images}:', '',
                  '| metric | what | value | unit |', '|---|---|---|---|']
        before = ' (before the temperature)' if 'loss_ts' in results else ''
        lines += [f'| {key} | {what}{before if key in ("loss", "ece", "brier") else ""} | '
                  f'{_format_metric(results[key])} | {unit} |' for key, what, unit in shown]
    if temperature != 1.0:
        lines += ['', '## Calibration', '', f'Temperature scaling: T = {temperature:.4g}, fitted by minimising the '
                  "NLL of the ensemble's softmax"
                  + (f' on split `{results["temperature_split"]}`' if results.get('temperature_split') else '')
                  + ' (never on the reported split). The model applies it: member logits are `z_m / T`, the '
                  'ensemble `mean_m z_m / T`.']
        if all(key in results for key in ('loss', 'loss_ts', 'ece', 'ece_ts')):
            lines += ['', f'On the reported split: NLL {results["loss"]:.4f} -> {results["loss_ts"]:.4f} nats, '
                          f'ECE {results["ece"]:.2f} -> {results["ece_ts"]:.2f} % (before -> after).']
    bibtex = citation(method) if mimo else None
    lines += ['', '## Citation', '', ("The method's paper, and timm, in which the model is built:" if bibtex
                                      else 'timm, in which the model is built:'), '', '```bibtex']
    lines += ([bibtex] if bibtex else []) + [TIMM_BIBTEX, '```']
    content = f'---\n{card_data.to_yaml()}\n---\n\n' + '\n'.join(lines) + '\n'
    return ModelCard(content)


# --------------------------------------------------------------------------------------------------------------------
# Save / push / load / export
# --------------------------------------------------------------------------------------------------------------------

def calibration_record(model: nn.Module, results: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """config.json's ``calibration`` entry of a model with a temperature other than 1 (``None`` otherwise): the
    temperature (the weights carry it: the heads' ``temperature`` buffer) and, from ``validate.py``'s results, the
    split it was fitted on and the reported split's NLL / ECE before and after."""
    from timm_mimo.calibration import get_temperature, temperature_heads
    if not temperature_heads(model) or get_temperature(model) == 1.0:
        return None
    record: Dict[str, Any] = dict(temperature=round(get_temperature(model), 6),
                                  method='temperature scaling of the ensemble logits (NLL), applied to every member '
                                         'head')
    for key in ('temperature_split', 'temperature_images', 'split', 'loss', 'loss_ts', 'ece', 'ece_ts'):
        if (results or {}).get(key) is not None:
            record[key] = results[key]
    return record


def save_pretrained(model: nn.Module, save_directory: Union[str, os.PathLike],
                    model_card_kwargs: Optional[Dict[str, Any]] = None, data_config: Optional[Dict[str, Any]] = None,
                    **model_args: Any) -> Path:
    """Write ``model.safetensors``, ``config.json`` and a ``README.md`` model card for ``local-dir:`` / ``hf-hub:``.

    Args:
        model: A model made by ``timm.create_model`` (its construction arguments are recorded in config.json, plus
            :func:`runtime_model_args`; a temperature other than 1 as ``calibration``, :func:`calibration_record`).
        save_directory: Folder to write (created if needed).
        model_card_kwargs: Passed to :func:`model_card` (``repo_id``, ``train_args``, ``results``, ``install``,
            ``dataset``).
        data_config: The preprocessing the weights expect (``input_size`` / ``img_size``, ``mean``, ``std``,
            ``crop_pct``, ``interpolation``), recorded in config.json's pretrained cfg (timm's ``save_for_hf``).
        **model_args: Extra or replacement construction arguments to record.
    """
    save_directory = Path(save_directory)
    args = dict(runtime_model_args(model), **model_args)
    record = calibration_record(model, (model_card_kwargs or {}).get('results'))
    label_names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')  # the classes, timm's key
    model_config = dict(label_names=label_names) if label_names else {}
    label_descriptions = (getattr(model, 'pretrained_cfg', None) or {}).get('label_descriptions')  # readable names
    if label_descriptions:
        model_config['label_descriptions'] = label_descriptions
    if record:
        model_config['calibration'] = record
    save_for_hf(model, str(save_directory), model_config=model_config or None, model_args=args or None,
                safe_serialization=True, data_config=data_config or None)
    model_card(model, **(model_card_kwargs or {})).save(save_directory / 'README.md')
    _share_as_umask_allows(save_directory)
    return save_directory


def _share_as_umask_allows(folder: Path) -> None:
    """Folder and files readable as the user's umask allows (755 / 644 under the usual 022), as timm's
    ``save_for_hf`` leaves them; temporary folders and some writers create 700 / 600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for item in folder.iterdir():
        if item.is_file() and not item.is_symlink():
            os.chmod(item, 0o666 & ~umask)


def push_to_hub(model: nn.Module, repo_id: str, commit_message: str = 'Add model', token: Optional[str] = None,
                private: bool = False, model_card_kwargs: Optional[Dict[str, Any]] = None, **model_args: Any) -> Any:
    """Push the :func:`save_pretrained` folder (safetensors, config.json, model card) to ``repo_id``."""
    from huggingface_hub import HfApi
    api = HfApi(token=token, library_name='timm')
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    card_kwargs = dict(model_card_kwargs or {}, repo_id=repo_id)
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder, model_card_kwargs=card_kwargs, **model_args)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)


def _check_config(folder: Path) -> None:
    """A one-line error naming ``folder/config.json`` when it is missing, not JSON, or names no known model."""
    import timm
    config_path = folder / 'config.json'
    if not config_path.is_file():
        raise FileNotFoundError(f'{folder} has no config.json: write the folder with timm_mimo.hub.save_pretrained')
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f'{config_path} is not valid JSON ({exc}); write it with timm_mimo.hub.save_pretrained') \
            from None
    architecture = config.get('architecture') if isinstance(config, dict) else None
    if not isinstance(architecture, str) or not architecture:
        raise ValueError(f'{config_path} has no "architecture" (the timm model name to build); write it with '
                         'timm_mimo.hub.save_pretrained')
    if not timm.is_model(architecture):
        raise ValueError(f'{config_path} names architecture {architecture!r}, which is not a registered timm model '
                         '(import the package that registers it first)')


def load_pretrained(name_or_path: Union[str, os.PathLike], pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """Create a model from a folder (``local-dir:``), a Hub repo (``hf-hub:``) or a registered name.

    Args:
        name_or_path: An existing folder written by :func:`save_pretrained`, ``'hf-hub:<repo>'``,
            ``'local-dir:<folder>'`` or a registered model name.
        pretrained: Load the weights (default) or only the architecture.
        **kwargs: Passed to ``timm.create_model``.
    """
    name = str(name_or_path)
    if name.startswith('local-dir:'):
        _check_config(Path(name.split(':', 1)[1]))
    elif ':' not in name and Path(name).is_dir():
        _check_config(Path(name))
        name = f'local-dir:{name}'
    with hub_errors_with_offline_hint(name):
        return create_model(name, pretrained=pretrained, **kwargs)


def _read_mapping(path: Union[str, os.PathLike], what: str) -> Dict[str, Any]:
    import yaml
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} {str(path)!r} does not exist')
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == '.json' else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f'{what} {str(path)!r} cannot be parsed: {" ".join(str(exc).split())[:200]}') from None
    if not isinstance(data, dict):
        raise ValueError(f'{what} {str(path)!r} holds a {type(data).__name__}, expected a mapping')
    return data


def train_model_kwargs(train_args: Dict[str, Any]) -> Dict[str, Any]:
    """The ``timm.create_model`` kwargs ``train.py`` used for a run's args (``model_kwargs``, class / member counts)."""
    kwargs = dict(train_args.get('model_kwargs') or {})
    for key in ('num_classes', 'in_chans', 'num_members'):
        if train_args.get(key) is not None:
            kwargs[key] = train_args[key]
    if train_args.get('input_size'):
        kwargs['in_chans'] = train_args['input_size'][0]
    return kwargs


def model_from_train_args(train_args: Dict[str, Any]) -> nn.Module:
    """The untrained model ``train.py`` built for these args (``model``, ``model_kwargs``, class / member counts)."""
    if not train_args.get('model'):
        raise ValueError('the train args name no model (key "model")')
    return create_model(train_args['model'], pretrained=False, **train_model_kwargs(train_args))


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """A training checkpoint (timm_mimo's or timm's train.py) read with ``weights_only``; one-line errors."""
    import pickle

    from timm_mimo.checkpoint import load_checkpoint_file, unpickling_reason
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {str(path)!r} does not exist')
    try:
        state = load_checkpoint_file(str(path))
    except pickle.UnpicklingError as exc:
        raise ValueError(f'checkpoint {str(path)!r} holds objects other than tensors and plain values '
                         f'(torch.load(weights_only=True) refused to unpickle it: {unpickling_reason(exc)})') from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f'checkpoint {str(path)!r} cannot be read as a torch checkpoint '
                         f'({type(exc).__name__}: {" ".join(str(exc).split())})') from None
    if not isinstance(state, dict):
        raise ValueError(f'checkpoint {str(path)!r} holds a {type(state).__name__}, not a training checkpoint')
    return state


def export_checkpoint(checkpoint: Union[str, os.PathLike], train_args: Optional[Union[str, os.PathLike]],
                      out: Union[str, os.PathLike], use_ema: bool = False,
                      results: Optional[Union[str, os.PathLike]] = None, repo_id: Optional[str] = None,
                      install: str = INSTALL_LINE, dataset: Optional[str] = None) -> Path:
    """A ``train.py`` checkpoint (``state_dict`` / ``state_dict_ema``) to a :func:`save_pretrained` folder + card.

    Works on timm_mimo's ``train.py`` checkpoints and on timm's own (their ``argparse.Namespace`` is read with
    ``weights_only``, :mod:`timm_mimo.checkpoint`). A ``temperature`` in ``results`` (``validate.py
    --fit-temperature``) is applied to the model (:func:`timm_mimo.calibration.set_temperature`) and recorded.

    Args:
        checkpoint: ``model_best.pth.tar`` / ``last.pth.tar`` / ``checkpoint-<epoch>.pth.tar`` of a run.
        train_args: The run's ``args.yaml``; ``None``: the ``args.yaml`` beside the checkpoint, else the arguments
            stored in it.
        out: Folder to write (new, or without an earlier export; written in a temporary folder, then moved).
        use_ema: Export the EMA weights (refused when the checkpoint has none).
        results: ``validate.py --results-file`` JSON for the card's metrics (and the temperature).
        repo_id: Hub repository the folder is meant for (shown in the card's usage line).
        install: Install line of the card.
        dataset: Name of the training data set for the card (default: the run's ``--dataset`` name).
    """
    from timm_mimo.calibration import set_temperature
    from timm_mimo.checkpoint import run_train_args
    args = _read_mapping(train_args, 'train args') if train_args else None
    metrics = _read_mapping(results, 'results file') if results else None
    if metrics:  # a temperature fitted on this checkpoint, and not flagged, or none
        from timm_mimo.temperature_provenance import check_temperature_source
        check_temperature_source(metrics, str(checkpoint), f'--results {str(results)!r}')
    state = read_checkpoint(checkpoint)
    if args is None:
        args = run_train_args(str(checkpoint), state)
        if not args.get('model') and state.get('arch'):
            args['model'] = state['arch']
        if not args.get('model'):
            raise ValueError(f'checkpoint {str(checkpoint)!r} has no args.yaml beside it and stores no run arguments; '
                             'give the run\'s args.yaml with --args')
    key = 'state_dict_ema' if use_ema else 'state_dict'
    if key not in state:
        hint = ' (the run had no --model-ema; export without --use-ema)' if use_ema else ''
        raise ValueError(f'checkpoint {str(checkpoint)!r} has no {key!r}{hint}; found {sorted(state)}')
    source = repr(str(train_args)) if train_args else "the run's arguments"
    arch = state.get('arch')
    if isinstance(arch, str) and arch and args.get('model') and arch.split('.')[0] != str(args['model']).split('.')[0]:
        raise ValueError(f'checkpoint {str(checkpoint)!r} holds a {arch!r} model (its arch) but {source} builds '
                         f'{args["model"]!r}: give the args.yaml of the checkpoint\'s run')
    model = model_from_train_args(args)
    state_dict = {k.removeprefix('module.'): v for k, v in state[key].items()}
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ValueError(f'checkpoint {str(checkpoint)!r} does not fit {args["model"]!r} built from {source}: '
                         f'{" ".join(str(exc).split())[:400]}') from None
    class_names = state.get('class_names') or args.get('class_names')
    if class_names:  # timm's label_names: the run's class of each output, a list in output order (None: no class)
        label_names = tuple(None if name is None else str(name) for name in class_names)
        model.pretrained_cfg = dict(model.pretrained_cfg, label_names=label_names)
        descriptions = args.get('class_descriptions') or {}  # a release's readable names (Tiny ImageNet's words.txt)
        if isinstance(descriptions, dict) and descriptions:
            model.pretrained_cfg = dict(model.pretrained_cfg, label_descriptions={
                name: str(descriptions[name]) for name in label_names if name in descriptions})
    if metrics and metrics.get('temperature') is not None:
        try:
            set_temperature(model, metrics['temperature'])
        except ValueError as exc:
            raise ValueError(f'results file {str(results)!r} holds temperature {metrics["temperature"]!r}: {exc}') \
                from None
    data_config = {k: args[k] for k in ('input_size', 'img_size', 'mean', 'std', 'crop_pct', 'interpolation')
                   if args.get(k) not in (None, '', [])}
    card = dict(train_args=args, results=metrics, repo_id=repo_id, install=install, dataset=dataset)
    def write(folder: Path) -> None:
        from timm_mimo.export_preprocessing import record_eval_transform
        save_pretrained(model.eval(), folder, model_card_kwargs=card, data_config=data_config)
        record_eval_transform(str(folder), args)  # --crop-pad: local-dir: evaluates as the run did
    return _write_folder(Path(out), write)


EXPORT_FILES = (WEIGHTS_FILE, 'config.json', 'README.md')


def _write_folder(out: Path, write: Any) -> Path:
    """``write(folder)`` into a temporary folder beside ``out``, then moved into place: the export is complete or
    absent. A folder that already holds an export's files is refused (nothing is overwritten)."""
    taken = [name for name in EXPORT_FILES if (out / name).exists()]
    if taken:
        raise ValueError(f'--out {str(out)!r} already holds {", ".join(taken)} (an earlier export?): nothing is '
                         'overwritten; pick a new --out, or remove those files first')
    if out.exists() and not out.is_dir():
        raise ValueError(f'--out {str(out)!r} is a file; give a folder name')
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.tmp', dir=out.parent))
    try:
        write(tmp)
        if not out.exists():
            os.rename(tmp, out)
        else:
            for item in tmp.iterdir():
                os.replace(item, out / item.name)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def recipe_summary(path: Union[str, os.PathLike]) -> str:
    """One line of a recipe for ``python -m timm_mimo configs``: model, data set, epochs, batch repetition."""
    try:
        recipe = _read_mapping(path, 'recipe')
    except (OSError, ValueError) as exc:
        return f'(unreadable: {" ".join(str(exc).split())[:80]})'
    parts = [str(recipe.get('model', '?')), f"on {recipe.get('dataset') or 'an image folder'}"]
    if recipe.get('epochs'):
        parts.append(f"{recipe['epochs']} epochs")
    if (recipe.get('batch_repeat') or 1) > 1:
        parts.append(f"b = {recipe['batch_repeat']}")
    return ', '.join(parts)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m timm_mimo export | configs | run ...`` in the top-level handler
    (:func:`timm_mimo.cli.errors.handle_errors`; ``run`` hands every flag to its script)."""
    from timm_mimo.cli.errors import handle_errors
    return handle_errors(_main, passthrough=lambda argv: bool(argv) and argv[0] == 'run')(argv)


def _main(argv: Optional[List[str]] = None) -> int:
    """``python -m timm_mimo export | configs | run ...``: one-line errors, exit code 2; SIGINT / SIGTERM during an
    export end with one line and status 130 / 143, nothing written."""
    from timm_mimo.cli.args import ArgumentParser, CliError
    from timm_mimo.cli.run_folder import Interrupted, SignalGuard
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ['run', '--version']:
        from timm_mimo.cli.args import version_line
        print(version_line('python -m timm_mimo run'))
        return 0
    if argv and argv[0] == 'run':  # the script's own flags (and --help) pass through untouched
        from timm_mimo.cli.timm_scripts import run_script_command
        return run_script_command(argv[1:])
    parser = ArgumentParser(prog='python -m timm_mimo',
                            description='timm_mimo commands: export a run to a Hub folder, list the shipped recipes, '
                                        "run timm's own scripts on timm_mimo models. Training and evaluation are "
                                        'timm-mimo-train and timm-mimo-validate.')
    commands = parser.add_subparsers(dest='command', required=True, metavar='{export,configs,run}')
    export = commands.add_parser(
        'export', help='a train.py checkpoint to a Hub folder (safetensors, config, card)',
        description="Export a checkpoint of timm_mimo's or timm's train.py to a folder that timm loads with "
                    "timm.create_model('local-dir:FOLDER', pretrained=True) and that pushes to the Hugging Face Hub "
                    'as it is: model.safetensors, config.json and a README.md model card describing the run '
                    '(training script, initialisation, recipe in effect, metrics of --results, temperature).')
    export.add_argument('--checkpoint', required=True, help="checkpoint written by timm_mimo's or timm's train.py")
    export.add_argument('--args', default=None,
                        help="the run's args.yaml (default: the args.yaml beside the checkpoint, else the arguments "
                             'stored in it)')
    export.add_argument('--out', required=True, help='folder to write (new, or without an earlier export)')
    export.add_argument('--use-ema', action='store_true', help='export the EMA weights')
    export.add_argument('--results', default=None,
                        help='validate.py results JSON for the card; its temperature (--fit-temperature) is applied')
    export.add_argument('--repo-id', default=None, help='Hub repository the folder is meant for (card usage line)')
    export.add_argument('--install', default=INSTALL_LINE, help='install line shown in the card')
    export.add_argument('--dataset-name', default=None,
                        help="the training data set's name for the card (default: the run's --dataset name, e.g. "
                             'cifar10 for torch/cifar10; an image folder has none)')
    commands.add_parser('configs', help='list the shipped training recipes (use one as --config NAME)',
                        description='List the training recipes shipped in the package, each with its model, data set, '
                                    'epochs and batch repetition; timm-mimo-train --config NAME runs one.')
    commands.add_parser('run', help="run a script of timm's (train.py, validate.py, benchmark.py ...) with the "
                                    'timm_mimo models registered: python -m timm_mimo run SCRIPT [ARGS ...]',
                        description="Run one of timm's own scripts (from timm's repository, at the installed "
                                    'release) with the timm_mimo models registered.')
    try:
        args = parser.parse_args(argv)
    except CliError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    if args.command == 'configs':
        from timm_mimo.recipes import CONFIG_DIR, list_configs
        names = list_configs()
        print(f'# {len(names)} recipes in {CONFIG_DIR}; run one with timm-mimo-train --config NAME --data-dir DIR')
        width = max((len(name) for name in names), default=0)
        for name in names:
            print(f'{name:<{width}}  {recipe_summary(os.path.join(CONFIG_DIR, name + ".yaml"))}')
        return 0
    with SignalGuard():
        try:
            folder = export_checkpoint(args.checkpoint, args.args, args.out, use_ema=args.use_ema,
                                       results=args.results, repo_id=args.repo_id, install=args.install,
                                       dataset=args.dataset_name)
        except (OSError, ValueError, RuntimeError, TypeError) as exc:
            print(f'error: {" ".join(str(exc).split())}', file=sys.stderr)
            return 2
        except (KeyboardInterrupt, Interrupted) as exc:
            name = exc.name if isinstance(exc, Interrupted) else 'SIGINT'
            print(f'error: interrupted ({name}); nothing was exported', file=sys.stderr)
            return exc.exit_code if isinstance(exc, Interrupted) else 130
    print(f'wrote {folder} (model.safetensors, config.json, README.md); load it with '
          f"timm.create_model('local-dir:{folder}', pretrained=True) after import timm_mimo")
    return 0
