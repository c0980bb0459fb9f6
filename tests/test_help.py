"""What ``--help`` and ``--version`` show: the MIMO group first, the refused timm options once in one compact
paragraph (still accepted with timm's default, refused when set), a description for every ``python -m timm_mimo``
verb, ``--version`` on every command."""
import pytest
import timm

import timm_mimo
from timm_mimo import hub
from timm_mimo.cli import train, validate
from timm_mimo.cli.args import CliError


def _help(parser) -> str:
    return parser.format_help()


def test_train_help_puts_the_mimo_group_first_and_lists_refused_options_once():
    parser = train.build_parser()
    text = _help(parser)
    groups = [line for line in text.splitlines() if line.endswith(':') or line.startswith('MIMO parameters')]
    assert groups[:3] == ['positional arguments:', 'options:', groups[2]] and groups[2].startswith('MIMO parameters')
    refused = [action.option_strings[-1] for action in parser._actions if getattr(action, 'refused_reason', None)]
    assert len(refused) == 41
    assert 'not supported:' not in text and text.count('timm options not supported (41;') == 1
    paragraph = text.split('timm options not supported', 1)[1]
    assert all(f' {flag},' in paragraph.replace('\n', ' ') or paragraph.rstrip().endswith(flag) for flag in refused)
    assert len(text.splitlines()) < 420  # was 591 with one entry per refused option and the whole usage


def test_refused_options_are_still_accepted_at_timms_default_and_refused_when_set():
    args = train.parse_args(['--data-dir', 'x', '--aug-splits', '0'])  # timm's default: accepted
    assert args.aug_splits == 0
    with pytest.raises(CliError, match="--aug-splits 3 is not supported by timm_mimo: "):
        train.parse_args(['--data-dir', 'x', '--aug-splits', '3'])
    assert 'timm options not supported' in _help(validate.build_parser())


@pytest.mark.parametrize('main, argv, prog', [
    (train.main, ['--version'], 'timm-mimo-train'),
    (validate.main, ['--version'], 'timm-mimo-validate'),
    (hub.main, ['--version'], 'python -m timm_mimo'),
    (hub.main, ['export', '--version'], 'python -m timm_mimo export'),
    (hub.main, ['configs', '--version'], 'python -m timm_mimo configs'),
    (hub.main, ['run', '--version'], 'python -m timm_mimo run'),
])
def test_every_command_prints_its_version(main, argv, prog, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None)
    assert capsys.readouterr().out.strip() == (f'{prog} (timm_mimo {timm_mimo.__version__}, timm {timm.__version__}, '
                                               f'torch {__import__("torch").__version__})')


@pytest.mark.parametrize('verb, words', [('export', 'model card describing the run'),
                                         ('configs', 'List the training recipes'),
                                         ('run', "timm's own scripts")])
def test_every_module_verb_has_a_description(verb, words, capsys):
    try:
        code = hub.main([verb, '--help'])
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None)
    out = ' '.join(capsys.readouterr().out.split())
    assert words in out


def test_configs_lists_each_recipe_with_model_data_and_epochs(capsys):
    assert hub.main(['configs']) == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(line for line in lines if line.startswith('cut_mixmo_wrn28_10_cifar10_b4 '))
    assert line.split(None, 1)[1] == 'cut_mixmo_wrn28_10, on torch/cifar10, 300 epochs, b = 4'
