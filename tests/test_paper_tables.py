"""The map of the papers' tables (timm_mimo/paper_tables.yaml): every row has a recipe or a reason for having none.

"Every trainable row has a recipe" is this test: a row of the map either names the recipes that train it or gives one
of the accepted reasons (another paper's number, a literature result, no recipe in the papers); every recipe it names
ships (and tests/test_configs.py builds and steps every shipped recipe); every shipped recipe trains some row; the
recipe tables of docs/recipes.md are the text generated from the map. Papers: thesis (R. Sun, HAL tel-03952815), MixMo
arXiv:2103.06132, MixShare arXiv:2205.10139, MixViT openreview.net/forum?id=pOq1HuMI8Dz.
"""
import os
import subprocess
import sys

import pytest
import yaml

from timm_mimo.recipes import (
    NO_RECIPE_REASONS,
    README_BEGIN,
    README_END,
    config_path,
    list_configs,
    paper_tables,
    readme_recipe_section,
    readme_with_recipe_section,
    recipes_by_table,
    rows_without_recipe,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = paper_tables()


def _rows(table):
    return {row.row: row for t in TABLES if t.table == table for row in t.rows}


def test_every_row_has_a_recipe_or_an_accepted_reason():
    assert len(TABLES) == 19 and sum(len(t.rows) for t in TABLES) == 242
    for row in rows_without_recipe(TABLES):
        assert row.reason in NO_RECIPE_REASONS, (row.table, row.row)
        if row.reason == 'other paper':  # the papers mark other papers' numbers with †; MIMO's ResNet-50 is Havasi's
            assert '†' in row.row or 'Havasi' in row.note, (row.table, row.row)
        if row.reason == 'literature':
            assert row.table == 'thesis Table 4.5', row.row
    for t in TABLES:
        for row in t.rows:
            assert '†' not in row.row or row.reason == 'other paper', (t.table, row.row)
            assert len(row.values) == len(t.columns), (t.table, row.row)


def test_every_named_recipe_ships_and_every_shipped_recipe_trains_a_row():
    named = {name for names in recipes_by_table(TABLES).values() for name in names}
    assert sorted(named) == list_configs()


def test_the_rows_the_tables_lacked_have_recipes():
    """thesis Table 3.1's baselines (CIFAR-100 recipe first, CIFAR-10 second) and Table 3.2's four AugMix rows."""
    t31 = _rows('thesis Table 3.1')
    assert t31['Vanilla'].recipes == ('mixmo_ta17_vanilla_wrn28_10_cifar100', 'mixmo_t3_1_vanilla_wrn28_10_cifar10')
    assert t31['Mixup'].recipes == ('mixmo_t3_1_mixup_wrn28_10_cifar100', 'mixmo_t3_1_mixup_wrn28_10_cifar10')
    assert t31['CutMix'].recipes == ('mixmo_ta17_cutmix_wrn28_10_cifar100', 'mixmo_t3_1_cutmix_wrn28_10_cifar10')
    assert (t31['DE (2 Nets)'].recipes, t31['DE (2 Nets)'].runs) == (t31['Vanilla'].recipes, 2)
    assert (t31['DE (2 Nets) + CutMix'].recipes, t31['DE (2 Nets) + CutMix'].runs) == (t31['CutMix'].recipes, 2)
    t32 = _rows('thesis Table 3.2')
    augmix = {label: row for label, row in t32.items() if row.values[0] == '✓'}
    assert sorted(augmix) == ['1 Net + AugMix', 'Cut-MixMo + AugMix (b=4)', 'DE (2 Nets) + AugMix',
                              'Linear-MixMo + AugMix (b=4)', 'Puzzle-Mix† + AugMix']
    assert [augmix[label].recipes for label in ('1 Net + AugMix', 'Linear-MixMo + AugMix (b=4)',
                                                'Cut-MixMo + AugMix (b=4)')] == [
        ('mixmo_t3_2_augmix_wrn28_10_cifar100',), ('mixmo_t3_2_linear_mixmo_augmix_wrn28_10_cifar100_b4',),
        ('mixmo_t3_2_cut_mixmo_augmix_wrn28_10_cifar100_b4',)]
    assert augmix['DE (2 Nets) + AugMix'].recipes == augmix['1 Net + AugMix'].recipes
    assert augmix['DE (2 Nets) + AugMix'].runs == 2


def test_values_are_the_papers():
    """A few cells against the papers' text (thesis Sec. 3.3.4: "85.40 % ... 0.535", "reaches 71.1 % Top1")."""
    t31 = _rows('thesis Table 3.1')
    assert t31['Cut-MixMo (b=4)'].values == ('4/1', '85.40', '97.22', '53.5', '97.51', '8.1')
    assert t31['Cut-MixMo + CutMix (b=4)'].values[1:4] == ('85.77', '97.42', '52.4')
    assert _rows('thesis Table 3.2')['Cut-MixMo + AugMix (b=4)'].values == ('✓', '71.1', '89.5', '1.16')
    assert _rows('thesis Table 3.6')['MixShare (fadeout to 100 epochs)'].values[0] == '79.0 ± 0.1'
    assert _rows('thesis Table 4.6')['Inference: sum'].values == ('×1', '81.9 ± 0.1')
    assert _rows('MixViT paper Table 3')['CaiT-M-24, MixViT'].values == ('83.5',)


@pytest.mark.parametrize('entry, message', [
    ({'row': 'Vanilla', 'values': ['1']}, 'needs either recipes or a reason'),
    ({'row': 'Vanilla', 'values': ['1'], 'recipes': ['x'], 'reason': 'other paper'}, 'needs either recipes or'),
    ({'row': 'Vanilla', 'values': ['1'], 'reason': 'not run'}, "reason 'not run' is not one of"),
    ({'row': 'Vanilla', 'values': ['1', '2'], 'recipes': ['x']}, '2 values for 1 columns'),
    ({'row': 'DE', 'values': ['1'], 'reason': 'other paper', 'runs': 2}, 'runs 2 needs recipes'),
])
def test_a_row_without_recipe_or_reason_is_refused(tmp_path, entry, message):
    path = tmp_path / 'tables.yaml'
    path.write_text(yaml.safe_dump({'tables': [{'table': 'T', 'caption': 'c', 'columns': ['Top1'], 'rows': [entry]}]}))
    with pytest.raises(ValueError, match=message):
        paper_tables(str(path))


def test_docs_recipe_section_is_generated_from_the_map():
    with open(os.path.join(REPO, 'docs', 'recipes.md'), encoding='utf-8') as f:
        text = f.read()
    begin, end = text.index(README_BEGIN), text.index(README_END)
    assert text[begin:end + len(README_END) + 1] == readme_recipe_section(TABLES), \
        'docs/recipes.md is stale: python -m timm_mimo.recipes --readme docs/recipes.md'
    assert readme_with_recipe_section(text) == text
    section = readme_recipe_section(TABLES)
    assert '| thesis Table 3.1 | 21 | 15 | 26 |' in section
    assert '2 `--seed` runs of `mixmo_t3_2_augmix_wrn28_10_cifar100` (`--ensemble-checkpoints`)' in section
    assert '| thesis Table 3.1 | Mixup BA† | other paper: ' in section


def test_readme_flag_rewrites_the_section_or_says_why_not(tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text(f'# x\n\n{README_BEGIN}\nold\n{README_END}\n\n## after\n', encoding='utf-8')
    env = {**os.environ, 'PYTHONPATH': REPO}
    run = [sys.executable, '-m', 'timm_mimo.recipes', '--readme', str(readme)]
    assert subprocess.run(run, env=env, capture_output=True, text=True).returncode == 0
    assert readme.read_text(encoding='utf-8') == f'# x\n\n{readme_recipe_section()}\n## after\n'
    readme.write_text('# no section\n', encoding='utf-8')
    done = subprocess.run(run, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith('error: ') and done.stderr.count('\n') == 1
    assert 'no generated recipe section' in done.stderr and readme.read_text(encoding='utf-8') == '# no section\n'


def test_deep_ensemble_rows_name_their_member_recipe_and_the_command():
    """A "DE (N Nets)" / "2-Nets" / "2-Cut-MixMos" row: N --seed runs of its member recipe, whose comments give the
    command that evaluates them as one ensemble."""
    members = {name for t in TABLES for row in t.rows if row.runs > 1 for name in row.recipes}
    assert len(members) == 34
    for name in members:
        with open(config_path(name), encoding='utf-8') as f:
            header = f.read().split('\nmodel:')[0]
        assert 'timm-mimo-validate --config RUN1/args.yaml --ensemble-checkpoints RUN1/model_best.pth.tar' in header, \
            name
