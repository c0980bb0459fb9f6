"""Packaging as a user outside the repository meets it: the wheel holds LICENSE and the recipes and ``--config NAME``
resolves from the installed package; the source distribution holds a test suite that runs; only lower bounds on
torch / torchvision."""
import configparser
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(Path(p).name for p in glob.glob(str(REPO / 'timm_mimo' / 'configs' / '*.yaml')))
SKIP = shutil.ignore_patterns('.git', '.venv', 'output', 'data', 'build', 'dist', '*.egg-info', '__pycache__',
                              '.pytest_cache', '.ruff_cache')


def _run(args, cwd, env=None, timeout=300):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS='1', **(env or {})))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='module')
def source_copy(tmp_path_factory):
    """The source tree copied away from the checkout, so that building writes nothing into it."""
    root = tmp_path_factory.mktemp('src') / 'timm_mimo_src'
    shutil.copytree(REPO, root, ignore=SKIP)
    return root


def test_setup_cfg_has_lower_bounds_only_on_torch_and_a_license_file():
    setup = configparser.ConfigParser()
    setup.read(REPO / 'setup.cfg')
    requires = {line.split('>=')[0].strip(): line.strip() for line in
                setup['options']['install_requires'].strip().splitlines()}
    for name in ('torch', 'torchvision'):
        assert '<' not in requires[name] and '==' not in requires[name] and '>=' in requires[name], requires[name]
    assert setup['metadata']['license'] == 'Apache-2.0' and setup['metadata']['license_files'].strip() == 'LICENSE'
    text = (REPO / 'LICENSE').read_text()
    assert 'Apache License' in text and 'Version 2.0, January 2004' in text and 'END OF TERMS AND CONDITIONS' in text


@pytest.mark.slow
def test_wheel_holds_license_and_recipes_and_config_names_resolve_from_it(source_copy, tmp_path):
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', tmp_path / 'dist',
          source_copy], cwd=tmp_path)
    wheel = next((tmp_path / 'dist').glob('timm_mimo-*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.endswith('.dist-info/licenses/LICENSE') or name.endswith('.dist-info/LICENSE') for name in names)
    assert sorted(Path(n).name for n in names if n.startswith('timm_mimo/configs/')) == RECIPES
    site = tmp_path / 'site'
    _run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', '--target', site, wheel],
         cwd=tmp_path)
    code = ('import timm_mimo, timm_mimo.recipes as r; from timm_mimo.cli.train import parse_args; '
            "a = parse_args(['--config', 'cut_mixmo_wrn28_10_cifar10_b4', '--data-dir', 'x']); "
            "print(timm_mimo.__file__); print(r.config_path('cut_mixmo_wrn28_10_cifar10_b4')); "
            'print(a.model, a.batch_repeat, a.lr, a.dataset)')
    env = dict(PYTHONPATH=str(site), HF_HUB_OFFLINE='1')
    lines = _run([sys.executable, '-c', code], cwd=tmp_path, env=env).stdout.strip().splitlines()[-3:]
    assert lines[0].startswith(str(site))  # the installed package, not a checkout
    assert lines[1] == str(site / 'timm_mimo' / 'configs' / 'cut_mixmo_wrn28_10_cifar10_b4.yaml')
    assert lines[2] == 'cut_mixmo_wrn28_10 4 0.0125 torch/cifar10'
    listed = _run([sys.executable, '-m', 'timm_mimo', 'configs'], cwd=tmp_path, env=env).stdout.splitlines()
    assert listed[0].startswith(f'# {len(RECIPES)} recipes in {site}')
    assert sorted(f'{line.split()[0]}.yaml' for line in listed[1:]) == RECIPES
    assert 'timm_mimo/py.typed' in names  # type hints are part of the installed package (PEP 561)
    version = _run([sys.executable, '-m', 'timm_mimo', 'export', '--version'], cwd=tmp_path, env=env).stdout
    assert version.startswith('python -m timm_mimo export (timm_mimo 0.1.0, timm ')


@pytest.mark.slow
def test_sdist_holds_a_test_suite_that_runs(source_copy, tmp_path):
    _run([sys.executable, '-c', f"from setuptools import build_meta; build_meta.build_sdist({str(tmp_path)!r})"],
         cwd=source_copy)
    archive = next(tmp_path.glob('timm_mimo-*.tar.gz'))
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / 'x', filter='data')
    root = next((tmp_path / 'x').iterdir())
    shipped = {str(p.relative_to(root)) for p in root.rglob('*') if p.is_file()}
    tests = {str(p.relative_to(REPO)) for p in (REPO / 'tests').glob('*.py')}
    assert tests <= shipped, sorted(tests - shipped)  # conftest.py, model_checks.py, the plugin included
    needed = {'LICENSE', 'README.md', 'pyproject.toml', 'setup.cfg', 'train.py', 'validate.py', 'benchmark.py',
              'hubconf.py', 'results/cifar10_study_summarize.py', 'scripts/cifar10_image_folder.py',
              *(f'timm_mimo/configs/{name}' for name in RECIPES),
              *(str(p.relative_to(REPO)) for p in (REPO / 'benchmarks').glob('*.py'))}
    assert needed <= shipped, sorted(needed - shipped)
    env = dict(PYTHONPATH=str(root), HF_HUB_OFFLINE='1')
    collected = _run([sys.executable, '-m', 'pytest', '--collect-only', '-q', '-p', 'no:cacheprovider'], cwd=root,
                     env=env).stdout  # exit status 0: every module imports (a collection error is status 2)
    counts = dict(line.rsplit(': ', 1) for line in collected.strip().splitlines() if line.startswith('tests/'))
    assert {name for name in tests if Path(name).name.startswith('test_')} == set(counts)
    assert all(int(count) > 0 for count in counts.values())
    ran = _run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests/test_loss.py',
                'tests/test_study_summary.py', 'tests/test_configs.py::test_config_by_name_or_path_and_an_unknown_name'
                '_is_one_line'], cwd=root, env=env).stdout  # status 0: all passed (5 would be: none collected)
    assert ran.count('.') >= 10 and '[100%]' in ran
