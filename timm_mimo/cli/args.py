"""What timm-mimo-train and timm-mimo-validate both parse: timm's flags (names, meanings, defaults), configs, checks.

Every timm ``train.py`` / ``validate.py`` option exists here under timm's name. The ones this package runs as timm
does are plain options; the ones it cannot honour are *refused*: they parse with timm's default, their help says
why, and setting them to anything else is a one-line error, never a silently ignored flag.
"""
import argparse
import contextlib
import math
import os
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml
from timm.utils import ParseKwargs

__all__ = ['CliError', 'ArgumentParser', 'version_line', 'Refused', 'add_refused', 'check_refused', 'load_config',
           'parse_with_config',
           'Check', 'check_values', 'positive', 'non_negative', 'unit_interval', 'at_least', 'one_line',
           'check_channel_stats', 'check_model_input', 'check_compile']


class CliError(Exception):
    """Bad user input: reported as one line on stderr, exit status 2, before anything is written."""


def version_line(prog: str) -> str:
    """What ``--version`` prints: the command, timm_mimo's version and the timm / torch it runs on."""
    import timm
    import torch

    from timm_mimo import __version__
    return f'{prog} (timm_mimo {__version__}, timm {timm.__version__}, torch {torch.__version__})'


class _VersionAction(argparse.Action):
    """``--version``: print :func:`version_line` and exit 0 (resolved when asked, not when the parser is built)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any):
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="print the versions of timm_mimo, timm and torch, and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        print(version_line(parser.prog))
        parser.exit()


class ArgumentParser(argparse.ArgumentParser):
    """argparse with errors as :class:`CliError` (one line, no usage dump), ``--version`` on every command (its
    sub-commands included), and the refused timm options (:func:`add_refused`) listed once, in one compact paragraph
    at the end of ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.add_help:
            self.add_argument('--version', action=_VersionAction)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f'{message} (see {self.prog} --help)')

    def format_help(self) -> str:
        import textwrap
        refused = [action.option_strings[-1] for action in self._actions
                   if getattr(action, 'refused_reason', None) is not None]
        text = super().format_help()
        if not refused:
            return text
        note = (f"timm options not supported ({len(refused)}; accepted with timm's default, any other value is a "
                f"one-line error saying why and what to use): {', '.join(refused)}")
        return text + '\n' + textwrap.fill(note, width=min(100, max(60, self._get_formatter()._width)),
                                           break_on_hyphens=False) + '\n'


def one_line(exc: BaseException, limit: Optional[int] = 300) -> str:
    """An exception's message on one line (its type name when the message is empty), cut at ``limit`` characters
    (``None``: whole)."""
    text = ' '.join(str(exc).split())
    return (text or type(exc).__name__)[:limit]


class Refused:
    """A timm option that is parsed (with timm's default) but refused when set.

    Args:
        flags: The option strings, e.g. ``('--aug-splits',)``.
        reason: Why timm_mimo does not honour it and what to use instead (shown in --help and in the error).
        **kwargs: ``add_argument`` keywords as timm declares them (``type``, ``default``, ``nargs``, ``action``).
    """

    def __init__(self, flags: Sequence[str], reason: str, **kwargs: Any):
        self.flags = tuple(flags)
        self.reason = reason
        self.kwargs = kwargs


def add_refused(group: argparse._ArgumentGroup, refused: Iterable[Refused]) -> None:
    """Add refused timm options to ``group``: hidden from the option list (``--help`` names them all in one line,
    :class:`ArgumentParser`); setting one is the error naming the reason (:func:`check_refused`)."""
    for option in refused:
        action = group.add_argument(*option.flags, help=argparse.SUPPRESS, **option.kwargs)
        action.refused_reason = option.reason


def check_refused(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line error for the first refused option set to something else than timm's default."""
    for action in parser._actions:
        reason = getattr(action, 'refused_reason', None)
        if reason is not None and getattr(args, action.dest) != action.default:
            raise CliError(f'{action.option_strings[-1]} {getattr(args, action.dest)!r} is not supported by '
                           f'timm_mimo: {reason}')


def _convert(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """A config value checked and converted as the command line would be."""
    where = f'config {path!r} key {key!r}'
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if value is not None and not isinstance(value, bool):
            raise CliError(f'{where}: expected true or false, got {value!r}')
        return value
    if isinstance(action, ParseKwargs):
        if not isinstance(value, dict):
            raise CliError(f'{where}: expected a mapping of keyword arguments, got {value!r}')
        return value
    if value is None:
        return None
    many = action.nargs in ('+', '*') or isinstance(action.nargs, int)
    if many != isinstance(value, (list, tuple)):
        shape = 'a list' if many else 'one value'
        raise CliError(f'{where}: expected {shape}, got {value!r}')
    convert = action.type or (lambda v: v)
    try:
        if many:
            converted = [convert(v) if not isinstance(v, (list, dict)) else _bad(v) for v in value]
            if isinstance(action.nargs, int) and len(converted) != action.nargs:
                raise ValueError(f'{action.nargs} values needed')
            return converted
        if isinstance(value, (list, dict)):
            _bad(value)
        if action.type is int and isinstance(value, float) and not value.is_integer():
            raise ValueError('not an integer')
        return convert(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise CliError(f'{where}: bad value {value!r} ({one_line(exc)})') from None


def _bad(value: Any) -> Any:
    raise ValueError(f'nested value {value!r}')


def load_config(path: str, parser: argparse.ArgumentParser, ignore_unknown: bool = False,
                aliases: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Flag defaults from a YAML file; keys are flag dests (``batch_size``) or flags (``batch-size``).

    Values are checked like command-line values (``epochs: [1, 2]`` is an error). Unknown keys are an error unless
    ``ignore_unknown`` (validate reads a training run's ``args.yaml``, which holds training-only keys). ``aliases``
    renames keys first (``val_split`` -> ``split``) unless the target key is present.
    """
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CliError(f'cannot read config {path!r}: {one_line(exc)}') from None
    if not isinstance(config, dict):
        raise CliError(f'config {path!r} must be a mapping of flag names to values, got {type(config).__name__}')
    actions = {action.dest: action for action in parser._actions}
    config = {str(key).replace('-', '_'): value for key, value in config.items()}
    for old, new in (aliases or {}).items():
        if old in config and new not in config:
            config[new] = config.pop(old)
    unknown = sorted(set(config) - set(actions) - {'config'})
    if unknown and not ignore_unknown:
        raise CliError(f'config {path!r} has unknown keys: {", ".join(unknown)} (see --help for the flag names)')
    return {key: _convert(actions[key], key, value, path) for key, value in config.items()
            if key in actions and key not in ('config', 'help')}


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
                      ignore_unknown_config: bool = False,
                      config_aliases: Optional[Dict[str, str]] = None) -> argparse.Namespace:
    """Parse ``argv``; a ``--config`` YAML sets defaults that the command line overrides (as timm's scripts do)."""
    known, _ = parser.parse_known_args(argv)
    if known.config:
        from timm_mimo.recipes import config_path
        try:
            path = config_path(known.config)
        except FileNotFoundError as exc:
            raise CliError(f'--config {exc}') from None
        parser.set_defaults(**load_config(path, parser, ignore_unknown_config, config_aliases))
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------------------------------
# Value checks: every numeric flag is checked before anything is written
# --------------------------------------------------------------------------------------------------------------------

Check = Tuple[str, Callable[[Any], bool], str]  # (dest, predicate on a set value, what it must be)


def positive(value: Any) -> bool:
    return value > 0


def non_negative(value: Any) -> bool:
    return value >= 0


def unit_interval(value: Any) -> bool:
    return 0.0 <= value <= 1.0


def at_least(bound: float) -> Callable[[Any], bool]:
    return lambda value: value >= bound


def check_values(parser: argparse.ArgumentParser, args: argparse.Namespace, checks: Sequence[Check]) -> None:
    """One-line error naming the flag, its bad value and the allowed range; unset (None) values are skipped."""
    flags = {action.dest: action.option_strings[-1] for action in parser._actions if action.option_strings}
    for dest, ok, expected in checks:
        value = getattr(args, dest, None)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, float) and math.isnan(item) or not ok(item):
                raise CliError(f'{flags.get(dest, dest)} {value!r}: must be {expected}')


def check_compile(args: argparse.Namespace) -> None:
    """``--torchcompile BACKEND`` names a torch.compile backend; ``--torchcompile-mode`` an inductor mode, with it."""
    backend, mode = getattr(args, 'torchcompile', None), getattr(args, 'torchcompile_mode', None)
    if backend:
        import torch._dynamo
        backends = torch._dynamo.list_backends(exclude_tags=())
        if backend not in backends:
            raise CliError(f'--torchcompile {backend!r}: not a torch.compile backend here; use inductor (the default), '
                           'aot_eager or eager (all: torch._dynamo.list_backends())')
    if mode is None:
        return
    if not backend:
        raise CliError(f'--torchcompile-mode {mode!r} sets how --torchcompile compiles: add --torchcompile (inductor) '
                       'or drop --torchcompile-mode')
    if backend != 'inductor':
        raise CliError(f'--torchcompile-mode {mode!r} is a mode of the inductor backend; --torchcompile {backend!r} '
                       'would ignore it: use --torchcompile inductor or drop --torchcompile-mode')
    import torch._inductor
    modes = list(torch._inductor.list_mode_options())
    if mode not in modes:
        raise CliError(f'--torchcompile-mode {mode!r}: not an inductor mode; use one of {", ".join(modes)} '
                       '(reduce-overhead: CUDA graphs)')


def existing_file(path: str, flag: str) -> str:
    """``path`` if it is a readable regular file, else a one-line error naming the flag."""
    if not os.path.exists(path):
        raise CliError(f'{flag} {path!r} does not exist')
    if os.path.isdir(path):
        held = sorted(name for name in os.listdir(path) if name.endswith(('.pth.tar', '.pth', '.safetensors', '.bin')))
        shown = ', '.join(held[:4]) + (', ...' if len(held) > 4 else '')
        raise CliError(f'{flag} {path!r} is a folder, not a file: ' + (
            f'name one of its checkpoints ({shown})' if held else 'it holds no checkpoint (*.pth.tar, *.safetensors)')
            + ("; an exported model folder loads with --model local-dir:FOLDER" if flag == '--checkpoint' else ''))
    if not os.path.isfile(path):
        raise CliError(f'{flag} {path!r} is not a file')
    if os.path.getsize(path) == 0:
        raise CliError(f'{flag} {path!r} is empty (0 bytes): the file was not completely written')
    return path


@contextlib.contextmanager
def quiet_warnings():
    """Silence library warnings while reading a user's file: its failure is reported as our one line."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield


def reader_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The dataset reader options of timm's scripts (Hugging Face datasets keys, remote code permission)."""
    return dict(input_key=args.input_key, target_key=args.target_key,
                trust_remote_code=args.dataset_trust_remote_code or None)


def list_folders(root: str) -> List[str]:
    """Sub-folders of ``root`` (sorted), for error messages."""
    try:
        return sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)))
    except OSError:
        return []


# --------------------------------------------------------------------------------------------------------------------
# Option groups both scripts parse (timm's names, meanings and defaults)
# --------------------------------------------------------------------------------------------------------------------

def _default_device() -> str:
    import torch
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def add_data_args(parser: argparse.ArgumentParser, group: argparse._ArgumentGroup) -> None:
    """Dataset options common to training and validation (the split flags differ and are added by each script)."""
    parser.add_argument('data', nargs='?', metavar='DIR', const=None,
                        help='dataset root folder (deprecated positional form of --data-dir)')
    group.add_argument('--data-dir', metavar='DIR', help='dataset root folder')
    group.add_argument('--dataset', metavar='NAME', default='',
                       help='dataset as "<type>/<name>", e.g. "torch/cifar10" (default: an image folder or tar under '
                            '--data-dir)')
    group.add_argument('--dataset-download', action='store_true', default=False,
                       help='let torch/ and tfds/ datasets fetch their files when missing')
    group.add_argument('--class-map', default='', type=str, metavar='FILENAME',
                       help='file mapping class names to label indices (default: none, classes taken from the data); '
                            'it must name every class of the split unless --class-map-partial')
    group.add_argument('--class-map-partial', action='store_true', default=False,
                       help='let --class-map leave classes of the split out: their images are skipped')
    group.add_argument('--class-names', type=str, nargs='+', default=None, metavar='NAME',
                       help='the class of each model output, in order; every split is labelled by these names '
                            "(default: training: the training split's classes; evaluation: the checkpoint's). A "
                            "run's args.yaml records them")
    group.add_argument('--input-key', default=None, type=str,
                       help='name of the image field in dataset records (hfds/, wds/, ...)')
    group.add_argument('--target-key', default=None, type=str,
                       help='name of the label field in dataset records (hfds/, wds/, ...)')
    group.add_argument('--dataset-trust-remote-code', action='store_true', default=False,
                       help='let a Hugging Face dataset run code from its own repository when loaded')
    add_refused(group, [Refused(('--input-img-mode',), 'the image mode follows the model: "L" for --in-chans 1, '
                                '"RGB" for 3', default=None, type=str)])


def add_model_args(group: argparse._ArgumentGroup) -> None:
    """Model and input options common to training and validation."""
    group.add_argument('--model', default='resnet50', type=str, metavar='MODEL',
                       help='registered model name, timm or timm_mimo (default: resnet50)')
    group.add_argument('--pretrained', action='store_true', default=False,
                       help='initialise --model from its published pretrained weights')
    group.add_argument('--num-classes', type=int, default=None, metavar='N',
                       help="number of classes of the classifier head (default: the model's own)")
    group.add_argument('--gp', default=None, type=str, metavar='POOL',
                       help="global pooling before the head, e.g. avg, max, avgmax, catavgmax, fast (default: the "
                            "model's own)")
    group.add_argument('--img-size', type=int, default=None, metavar='N',
                       help="square input resolution in pixels (default: the model's own)")
    group.add_argument('--in-chans', type=int, default=None, metavar='N',
                       help='number of input image channels (default: 3)')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N',
                       help='full input shape C H W, e.g. 3 224 224; takes precedence over --img-size / --in-chans '
                            "(default: the model's own)")
    group.add_argument('--crop-pct', default=None, type=float, metavar='N',
                       help="evaluation centre-crop fraction, in (0, 1] (default: the model's own)")
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN',
                       help="per-channel normalisation mean (default: the model's own)")
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD',
                       help="per-channel normalisation standard deviation (default: the model's own)")
    group.add_argument('--interpolation', default='', type=str, metavar='NAME',
                       help="resize interpolation, e.g. bilinear or bicubic (default: the model's own)")
    group.add_argument('--channels-last', action='store_true', default=False,
                       help='keep the model and its inputs in the channels_last (NHWC) memory format')
    group.add_argument('--fast-norm', default=False, action='store_true',
                       help="use timm's experimental fast normalisation kernels")
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                       help='additional model constructor arguments, key=value (e.g. backbone=wrn28_2 depth=10 for a '
                            'MIMO model)')
    group.add_argument('--torchcompile-mode', type=str, default=None,
                       help="mode passed to torch.compile, e.g. max-autotune (default: torch's own)")
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                       help='compile the model with torch.compile, optionally naming the backend (default: inductor)')
    group.add_argument('--crop-pad', type=int, default=None, metavar='N',
                       help='timm_mimo: CIFAR-style images. Training: zero-pad by N, random crop, h-flip (the papers '
                            'use 4); evaluation: centred pad to the input size. Unset: timm\'s transforms')
    add_refused(group, [
        Refused(('--torchscript',), 'torch.jit.script cannot compile the MIMO models; use --torchcompile, or '
                'torch.jit.trace / torch.export on the trained model', dest='torchscript', action='store_true',
                default=False),
        Refused(('--fuser',), 'a TorchScript fuser; TorchScript is not used (see --torchscript)', default='',
                type=str),
    ])


def add_device_args(group: argparse._ArgumentGroup) -> None:
    """Device and precision options common to training and validation."""
    group.add_argument('--device', default=_default_device(), type=str,
                       help='torch device to run on (default: cuda when available, else cpu)')
    group.add_argument('--amp', action='store_true', default=False,
                       help='mixed precision through autocast (float16 on CUDA; bfloat16 on CPU)')
    group.add_argument('--amp-dtype', default='float16', type=str, choices=('float16', 'bfloat16'),
                       help='autocast dtype of --amp (default: float16; the CPU always uses bfloat16)')
    group.add_argument('--device-modules', default=None, type=str, nargs='+',
                       help='Python modules to import before the device is set up (out-of-tree accelerator backends)')
    add_refused(group, [Refused(('--model-dtype',), 'MIMO mixing masks and losses run in float32; use --amp for '
                                'lower precision', default=None, type=str)])


def add_loader_args(group: argparse._ArgumentGroup) -> None:
    """Data loader options common to training and validation."""
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N',
                       help='data loading worker processes (default: 4)')
    group.add_argument('--pin-mem', action=argparse.BooleanOptionalAction, default=None,
                       help='page-locked loader memory, so copies to the GPU do not block (default: on with CUDA, '
                            'off on the CPU)')
    group.add_argument('--no-prefetcher', action='store_true', default=False,
                       help='no device prefetcher: the workers normalise the images and each batch is copied when the '
                            'step needs it (default: uint8 batches copied one ahead on a side CUDA stream and '
                            'normalised on the device, as timm\'s prefetcher)')


def check_channel_stats(args: argparse.Namespace) -> None:
    """``--mean`` / ``--std`` give one value per input channel, or one for all of them (timm's rule, whose
    ``resolve_data_config`` would fail with a bare ``AssertionError``); the channels are ``--input-size``'s first
    value, else ``--in-chans``, else 3, as timm counts them."""
    in_chans = args.input_size[0] if getattr(args, 'input_size', None) else getattr(args, 'in_chans', None) or 3
    for flag in ('mean', 'std'):
        values = getattr(args, flag, None)
        if values is not None and len(values) not in (1, in_chans):
            raise CliError(f'--{flag} {" ".join(f"{v:g}" for v in values)}: {len(values)} values for {in_chans} input '
                           f'channel{"s" if in_chans > 1 else ""}; give {in_chans} values (or one for every channel)')


def check_model_input(model: Any, args: argparse.Namespace, input_size: Sequence[int],
                      name: Optional[str] = None) -> None:
    """One forward of a blank image of the data config's size (eval mode, nothing updated), and the model's mixing
    grid at that size: a size the model cannot take (a ViT's fixed size, a multiple of its patch) is refused here,
    not at the first training or evaluation batch."""
    import torch
    given = (f'--input-size {" ".join(map(str, args.input_size))}' if args.input_size else
             f'--img-size {args.img_size}' if args.img_size else f'input size {tuple(input_size)}')
    param = next(model.parameters(), None)
    modes = [(module, module.training) for module in model.modules()]
    try:
        mix_grid = getattr(model, 'mix_grid', None)
        if callable(mix_grid):
            mix_grid(tuple(input_size[1:]))
        blank = torch.zeros(1, *input_size, device=param.device if param is not None else 'cpu')
        if args.channels_last:
            blank = blank.contiguous(memory_format=torch.channels_last)
        model.eval()
        with torch.no_grad():
            model(blank)
    except (RuntimeError, ValueError, AssertionError, TypeError) as exc:
        built = getattr(getattr(model, 'patch_embed', None), 'img_size', None)
        hint = (f'; the model is built for {built[0]}x{built[1]} px: give --img-size {built[0]}, or build it for '
                f'another size with --model-kwargs img_size=N' if built else '; give the size it is built for')
        raise CliError(f'{given}: {name or repr(args.model)} cannot take {"x".join(map(str, input_size))} inputs '
                       f'({one_line(exc, 200)}){hint}') from None
    finally:
        for module, training in modes:
            module.training = training


MODEL_CHECKS: List[Check] = [
    ('num_classes', at_least(1), 'an integer >= 1'),
    ('in_chans', at_least(1), 'an integer >= 1'),
    ('img_size', at_least(1), 'an integer >= 1'),
    ('input_size', at_least(1), 'three integers >= 1'),
    ('crop_pct', lambda v: 0 < v <= 1, 'in (0, 1]'),
    ('std', positive, '> 0'),
    ('crop_pad', non_negative, 'an integer >= 0'),
    ('workers', non_negative, 'an integer >= 0'),
    ('batch_size', at_least(1), 'an integer >= 1'),
]
