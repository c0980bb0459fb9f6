"""The documentation site: ``mkdocs build --strict`` of docs/ passes, and a broken link fails it (skipped where
mkdocs-material is not installed: ``pip install ".[docs]"``; CI installs it and builds the site too). The README is
short and links to every page."""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec('mkdocs') is None
                                  or importlib.util.find_spec('material') is None,
                                  reason='mkdocs-material is not installed (pip install ".[docs]")')


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir', str(site)], cwd=root,
                          capture_output=True, text=True, timeout=300)


@needs_mkdocs
def test_the_docs_build_strictly_and_a_broken_link_fails_the_build(tmp_path):
    built = _build(REPO, tmp_path / 'site')
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert (tmp_path / 'site' / 'evaluation' / 'index.html').is_file()
    assert (tmp_path / 'site' / 'img' / 'cifar10_study_reliability.png').is_file()
    copy = tmp_path / 'copy'
    copy.mkdir()
    shutil.copytree(REPO / 'docs', copy / 'docs')
    shutil.copy(REPO / 'mkdocs.yml', copy / 'mkdocs.yml')
    with open(copy / 'docs' / 'models.md', 'a') as f:
        f.write('\nSee [the missing page](missing.md).\n')
    broken = _build(copy, tmp_path / 'site2')
    assert broken.returncode != 0 and 'missing.md' in broken.stdout + broken.stderr


def test_every_page_is_in_the_nav_and_every_picture_exists():
    config = yaml.safe_load((REPO / 'mkdocs.yml').read_text())
    nav = {page for entry in config['nav'] for page in entry.values()}
    assert nav == {path.name for path in (REPO / 'docs').glob('*.md')}
    for page in (REPO / 'docs').glob('*.md'):
        for image in re.findall(r'!\[[^\]]*\]\(([^)]+)\)', page.read_text()):
            assert (REPO / 'docs' / image).is_file(), (page.name, image)


def test_the_readme_is_short_keeps_the_two_commands_and_links_every_page():
    text = (REPO / 'README.md').read_text()
    assert len(text.splitlines()) < 100
    assert 'bash scripts/quickstart.sh' in text and 'HF_HUB_OFFLINE=1 .venv/bin/python -m pytest' in text
    pages = {path.name for path in (REPO / 'docs').glob('*.md')}
    linked = set(re.findall(r'\]\(docs/([a-z_]+\.md)\)', text))
    assert linked == pages
    for image in re.findall(r'!\[[^\]]*\]\(([^)]+)\)', text):
        assert (REPO / image).is_file(), image
