"""Every committed results file names the code revision that made it (results/provenance.yaml), and that revision is
an ancestor of HEAD: a figure from a branch that never landed, or from no named code at all, fails here."""
import fnmatch
import os
import subprocess
from typing import Callable, Dict, List, Sequence

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'results')
NOT_RESULTS = ('*.sh', '*.py', 'README.md', 'provenance.yaml')


def git(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(['git', *argv], cwd=REPO, capture_output=True, text=True)


def provenance_problems(entries: Sequence[Dict], files: Sequence[str], is_ancestor: Callable[[str], bool]) -> List[str]:
    """What is wrong with ``entries`` for the results ``files`` (paths relative to results/)."""
    problems = []
    for entry in entries:
        for key in ('files', 'commit', 'machine', 'command'):
            if not entry.get(key):
                problems.append(f'entry {entry.get("files")}: no {key}')
        commit = str(entry.get('commit', ''))
        if commit and not is_ancestor(commit):
            problems.append(f'entry {entry.get("files")}: commit {commit} is not an ancestor of HEAD')
    for path in files:
        if any(fnmatch.fnmatch(os.path.basename(path), pattern) for pattern in NOT_RESULTS) and '/' not in path:
            continue
        matched = [entry['files'] for entry in entries
                   if any(fnmatch.fnmatch(path, pattern) for pattern in entry.get('files') or ())]
        if len(matched) != 1:
            problems.append(f'{path}: matched by {len(matched)} entries {matched}, expected exactly one')
    return problems


def _git_checkout_with_history() -> bool:
    inside = git('rev-parse', '--is-inside-work-tree')
    return inside.returncode == 0 and git('rev-parse', '--is-shallow-repository').stdout.strip() == 'false'


def _is_ancestor(commit: str) -> bool:
    return git('merge-base', '--is-ancestor', commit, 'HEAD').returncode == 0


@pytest.mark.skipif(not _git_checkout_with_history(), reason='needs a git checkout with its history (not a shallow '
                                                            'clone or a source distribution)')
def test_every_results_file_names_an_ancestor_commit():
    with open(os.path.join(RESULTS, 'provenance.yaml')) as f:
        entries = yaml.safe_load(f)
    tracked = git('ls-files', 'results').stdout.split()
    files = [os.path.relpath(os.path.join(REPO, path), RESULTS) for path in tracked]
    assert provenance_problems(entries, files, _is_ancestor) == []


def test_a_missing_commit_an_unknown_commit_and_an_unlisted_file_are_problems():
    entries = [dict(files=['a.md'], commit='0123abc', machine='m', command='c'),
               dict(files=['b/*'], machine='m', command='c')]
    problems = provenance_problems(entries, ['a.md', 'b/x.csv', 'c.png', 'run.sh'], lambda commit: False)
    assert problems == ["entry ['a.md']: commit 0123abc is not an ancestor of HEAD", "entry ['b/*']: no commit",
                        "c.png: matched by 0 entries [], expected exactly one"]
