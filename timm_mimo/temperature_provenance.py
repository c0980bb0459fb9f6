"""Where a fitted temperature comes from, so that it is only ever applied to the model it was fitted on.

``timm-mimo-validate --fit-temperature SPLIT`` records, beside ``temperature``: the checkpoint it was fitted on (path
and SHA-256 prefix), the split and its image count, and whether the fit hit the search bound of
:func:`timm_mimo.metrics.fit_temperature` (T in [1e-3, 1e3]) or used fewer than :data:`MIN_IMAGES` images: such a
temperature is flagged (``temperature_flag``) and ``python -m timm_mimo export --results`` refuses it, as it refuses
the temperature of another checkpoint.
"""
import hashlib
import os
from typing import Any, Dict, Optional

__all__ = ['MIN_IMAGES', 'SEARCH_BOUNDS', 'checkpoint_digest', 'provenance_columns', 'check_temperature_source']

MIN_IMAGES = 100  # below this a held-out split cannot pin one temperature (one image fits T at the bound)
SEARCH_BOUNDS = (1e-3, 1e3)  # fit_temperature's golden-section interval of T


def checkpoint_digest(path: Optional[str]) -> str:
    """The first 16 hex digits of the SHA-256 of the file at ``path`` ('' for none)."""
    if not path or not os.path.isfile(path):
        return ''
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()[:16]


def provenance_columns(checkpoint: Optional[str], factor: float, num_images: int) -> Dict[str, Any]:
    """The provenance columns of a temperature whose fitted factor (relative to the model's) is ``factor``."""
    low, high = SEARCH_BOUNDS
    at_bound = factor <= low * 1.001 or factor >= high / 1.001
    flags = (['at the search bound (the held-out split is separated perfectly or too small)'] if at_bound else []) + \
        ([f'fitted on {num_images} images (< {MIN_IMAGES})'] if num_images < MIN_IMAGES else [])
    return dict(temperature_checkpoint=checkpoint or '', temperature_checkpoint_sha256=checkpoint_digest(checkpoint),
                temperature_at_bound=at_bound, temperature_flag='; '.join(flags))


def check_temperature_source(results: Dict[str, Any], checkpoint: str, source: str) -> None:
    """``ValueError`` when the temperature of ``results`` (read from ``source``) may not be applied to
    ``checkpoint``: fitted on another checkpoint (hash, else path), or flagged."""
    if results.get('temperature') is None:
        return
    recorded = results.get('temperature_checkpoint_sha256')
    if recorded:
        if recorded != checkpoint_digest(checkpoint):
            raise ValueError(f'{source} holds a temperature fitted on another checkpoint '
                             f'({results.get("temperature_checkpoint") or results.get("checkpoint")!r}, sha256 '
                             f'{recorded}), not {checkpoint!r}: fit it on this checkpoint (timm-mimo-validate '
                             f'--checkpoint {checkpoint} --fit-temperature SPLIT)')
    else:
        fitted_on = results.get('checkpoint')
        if isinstance(fitted_on, str) and fitted_on and os.path.isfile(fitted_on) and \
                os.path.realpath(fitted_on) != os.path.realpath(checkpoint) and \
                checkpoint_digest(fitted_on) != checkpoint_digest(checkpoint):
            raise ValueError(f'{source} was written for the checkpoint {fitted_on!r}, not {checkpoint!r}: its '
                             'temperature belongs to that model; fit one on this checkpoint')
    if results.get('temperature_flag'):
        raise ValueError(f'{source}: the temperature {results["temperature"]!r} is flagged '
                         f'({results["temperature_flag"]}); fit it on a larger held-out split')
