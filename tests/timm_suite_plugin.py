"""pytest plugin: run timm's own ``tests/test_models.py`` (from timm's source distribution) on the timm_mimo models.

Loaded with ``-p timm_suite_plugin`` by ``tests/test_timm_suite.py``. It

* imports ``timm_mimo`` before timm's test module is collected, so every timm_mimo name is registered;
* restricts the model lists timm's tests are parametrized with (``timm.list_models``) to the timm_mimo names, read from
  timm's registry by module, so models added to any ``timm_mimo.models`` module are picked up without a list here;
* treats the timm_mimo transformers (modules whose name contains ``vit``) as timm treats its own transformers: they join
  timm's ``NON_STD_FILTERS`` group (token features, no spatial ``pool_size``), exactly like ``cait_*`` / ``convit_*``;
* deselects the tests that are about named timm models only, and skips by name the cases that cannot apply, each with
  its one-line reason (``SKIPS``).

The test functions themselves are timm's, unchanged.
"""
import fnmatch
import os
from typing import Any, List, Sequence, Tuple

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pytest  # noqa: E402
import timm  # noqa: E402
from model_checks import timm_mimo_module  # noqa: E402 - imports timm_mimo, which registers the models

# timm_mimo modules of single-input models (the papers' backbones); every other timm_mimo module holds MIMO models
SINGLE_INPUT_MODULES = frozenset({'cifar_resnet', 'convit_ca'})

# (timm test function pattern, which timm_mimo models, reason): the cases that cannot apply, one line each.
SKIPS: Tuple[Tuple[str, str, str], ...] = (
    ('test_model_forward_torchscript', 'mimo', 'MIMO models are not scriptable (the forward dispatches on a MixPlan '
     'and an encoder call record); torch.jit.trace and torch.export are the supported paths (tests/test_contract.py)'),
    ('test_model_forward_fx_torchscript', 'mimo', 'needs torch.jit.script of an FX graph, see the TorchScript skip'),
    ('test_model_*_fx', 'mimo', 'torch.fx symbolic tracing cannot run the shape checks of the MIMO contract '
     '(x.ndim, member counts); torch.export captures the graph instead (tests/test_contract.py)'),
    ('test_model_forward_features', 'mimo', 'MIMO models refuse features_only with a RuntimeError naming '
     'forward_features / forward_head(pre_logits=True) (tests/test_contract.py)'),
    ('test_model_*_pretrained', 'all', 'downloads timm backbone checkpoints from the Hub and this run is offline '
     '(HF_HUB_OFFLINE=1); tests/test_hub.py checks every tag\'s source and the offline message'),
)

_timm_list_models = timm.list_models


def is_ours(name: str) -> bool:
    """A model name (with or without a pretrained tag) registered by a timm_mimo module."""
    return bool(timm_mimo_module(name))


def returns_tokens(name: str) -> bool:
    """A timm_mimo transformer: ``forward_features`` gives token features, timm's non-standard group."""
    return 'vit' in timm_mimo_module(name)


def _is_non_std_list(filters: Any) -> bool:
    """timm's test module passes its ``NON_STD_FILTERS`` (which hold ``'convit_*'``) as a filter or an exclusion."""
    return isinstance(filters, (list, tuple)) and 'convit_*' in filters


def list_models(filter: Any = '', module: Any = '', pretrained: bool = False, exclude_filters: Any = '',
                name_matches_cfg: bool = False, include_tags: Any = None) -> List[str]:
    """``timm.list_models`` restricted to the timm_mimo names, timm_mimo transformers counted as non-standard."""
    non_std_only = _is_non_std_list(filter)
    names = _timm_list_models('' if non_std_only else filter, module, pretrained, exclude_filters,
                              name_matches_cfg, include_tags)
    names = [n for n in names if is_ours(n)]
    if non_std_only:
        names = [n for n in names if returns_tokens(n) or any(fnmatch.fnmatch(n, f) for f in filter)]
    if _is_non_std_list(exclude_filters):
        names = [n for n in names if not returns_tokens(n)]
    return names


timm.list_models = list_models


def is_mimo(name: str) -> bool:
    """A timm_mimo MIMO model (every timm_mimo module but the single-input backbones')."""
    return is_ours(name) and timm_mimo_module(name) not in SINGLE_INPUT_MODULES


def skip_reason(test_name: str, model_name: str, skips: Sequence[Tuple[str, str, str]] = SKIPS) -> str:
    """The one-line reason timm's ``test_name`` does not apply to ``model_name``, '' when it does."""
    for test, which, reason in skips:
        if fnmatch.fnmatch(test_name, test) and (which == 'all' or is_mimo(model_name)):
            return reason
    return ''


def pytest_configure(config: pytest.Config) -> None:
    for marker in ('base', 'forward', 'backward', 'cfg', 'cfg_nonstd', 'torchscript', 'features', 'fxforward',
                   'fxbackward', 'timeout(seconds): timm marks (pytest-timeout is optional)'):
        config.addinivalue_line('markers', marker)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    selected, deselected = [], []
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        model_name = params.get('model_name')
        if not isinstance(model_name, str) or not is_ours(model_name):
            deselected.append(item)  # a test of named timm models (resnet18, convnext_atto, ...), not ours
            continue
        reason = skip_reason(item.originalname, model_name)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
        selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
