"""The console scripts' layout: no file of ``timm_mimo/cli/`` over 600 lines, and nothing imports the commands."""
from test_import_layers import PACKAGE_ROOT, import_graph

MAX_LINES = 600
COMMANDS = ('timm_mimo.cli.train', 'timm_mimo.cli.validate')


def test_no_cli_file_is_over_600_lines():
    lengths = {path.name: len(path.read_text().splitlines()) for path in (PACKAGE_ROOT / 'cli').glob('*.py')}
    assert {'train.py', 'validate.py', 'run_loop.py'} <= set(lengths)
    assert {name: count for name, count in lengths.items() if count > MAX_LINES} == {}


def test_no_package_module_imports_a_command():
    graph = import_graph()
    importers = {module: sorted(set(targets) & set(COMMANDS)) for module, targets in graph.items()}
    assert {module: found for module, found in importers.items() if found} == {}
    assert 'timm_mimo.cli.run_loop' in graph['timm_mimo.cli.train']  # the graph sees the commands' own imports

