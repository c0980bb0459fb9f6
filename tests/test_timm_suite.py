"""timm's own model tests (``tests/test_models.py`` of timm's source distribution) on every timm_mimo name.

The file is not copied here: ``.ci/run`` downloads timm's sdist for the installed version
(``pip download --no-binary :all: --no-deps timm==<version>``) and unpacks it under ``$TIMM_MIMO_CACHE`` (default
``~/.cache/timm_mimo``); ``TIMM_MIMO_TIMM_TESTS`` may point at any unpacked ``tests`` folder instead. Without it the
test is skipped with the command to fetch it. ``tests/timm_suite_plugin.py`` selects the timm_mimo names and skips,
by name and with a reason, the cases that cannot apply (TorchScript / FX / features_only / downloads).
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import timm
from model_checks import timm_mimo_names

REPO = Path(__file__).resolve().parents[1]


def timm_tests_dir() -> Optional[Path]:
    """The ``tests`` folder of timm's sdist for the installed timm, if it has been fetched."""
    explicit = os.environ.get('TIMM_MIMO_TIMM_TESTS')
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get('TIMM_MIMO_CACHE', Path.home() / '.cache' / 'timm_mimo'))
    folder = cache / f'timm-{timm.__version__}' / 'tests'
    return folder if (folder / 'test_models.py').is_file() else None


def junit_results(path: Path) -> Tuple[Dict[str, int], List[str]]:
    """passed / failed / errors / skipped counts of a junit XML report, and one line per failure or error."""
    counts, problems = dict(passed=0, failed=0, errors=0, skipped=0), []
    for case in ET.parse(path).getroot().iter('testcase'):
        children = {child.tag: child for child in case}
        for kind, key in (('failure', 'failed'), ('error', 'errors')):
            if kind in children:
                counts[key] += 1
                message = ' '.join((children[kind].get('message') or children[kind].text or '').split())
                problems.append(f'{case.get("name")}: {message[:300]}')
                break
        else:
            counts['skipped' if 'skipped' in children else 'passed'] += 1
    return counts, problems


@pytest.mark.skipif(timm_tests_dir() is None, reason=(
    f'timm\'s sdist tests are not fetched: pip download --no-binary :all: --no-deps timm=={timm.__version__} '
    '-d ~/.cache/timm_mimo && tar -xzf ~/.cache/timm_mimo/timm-*.tar.gz -C ~/.cache/timm_mimo (.ci/run does it)'))
def test_timm_test_models_passes_on_every_timm_mimo_name(tmp_path):
    tests = timm_tests_dir()
    assert (tests / 'test_models.py').is_file(), f'{tests} holds no test_models.py'
    report = tmp_path / 'junit.xml'
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2'),
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / 'tests'), os.environ.get('PYTHONPATH', '')]))
    env.pop('GITHUB_ACTIONS', None)  # timm's test module changes its model lists on GitHub runners
    command = [sys.executable, '-m', 'pytest', str(tests / 'test_models.py'), '-p', 'timm_suite_plugin',
               '-p', 'no:cacheprovider', '-q', '--disable-warnings', '--tb=short', f'--junitxml={report}']
    proc = subprocess.run(command, cwd=tests.parent, env=env, capture_output=True, text=True, timeout=1800)
    assert report.is_file(), f'timm\'s test run wrote no report: {proc.stdout[-3000:]} {proc.stderr[-3000:]}'
    counts, problems = junit_results(report)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ''
    print(f'timm {timm.__version__} tests/test_models.py on {len(timm_mimo_names())} timm_mimo names: {counts}; '
          f'{summary}')
    assert not problems, '\n'.join(problems[:20])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # forward, backward and a cfg test ran (not skipped) for every name
    assert counts['passed'] >= 3 * len(timm_mimo_names())
