"""Where a fitted temperature comes from, so that it is only ever applied to the model it was fitted on.

``timm-mimo-validate --fit-temperature SPLIT`` records, beside ``temperature``, ``temperature_split``,
``temperature_images`` and ``temperature_at_bound`` (:func:`timm_mimo.calibration.fit_temperature`), the checkpoint it
was fitted on (path and SHA-256 prefix) and ``temperature_flag``: a fit at the search bound or on fewer than
:data:`MIN_IMAGES` images. ``python -m timm_mimo export --results`` refuses a flagged temperature, as it refuses the
temperature of another checkpoint.
"""
import hashlib
import os
from typing import Any, Dict, Optional

__all__ = ['MIN_IMAGES', 'checkpoint_digest', 'provenance_columns', 'check_temperature_source']

MIN_IMAGES = 100  # below this a held-out split cannot pin one temperature (one image fits T at the bound)


def checkpoint_digest(path: Optional[str]) -> str:
    """The first 16 hex digits of the SHA-256 of the file at ``path`` ('' for none)."""
    if not path or not os.path.isfile(path):
        return ''
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()[:16]


def provenance_columns(checkpoint: Optional[str], at_bound: bool, num_images: int) -> Dict[str, Any]:
    """The provenance columns of a fitted temperature (``at_bound``: the fit ended at its search bound,
    :func:`timm_mimo.calibration.at_search_bound`)."""
    flags = (['at the search bound (the held-out split is separated perfectly or too small)'] if at_bound else []) + \
        ([f'fitted on {num_images} images (< {MIN_IMAGES})'] if num_images < MIN_IMAGES else [])
    return dict(temperature_checkpoint=checkpoint or '', temperature_checkpoint_sha256=checkpoint_digest(checkpoint),
                temperature_flag='; '.join(flags))


def check_temperature_source(results: Dict[str, Any], checkpoint: str, source: str) -> None:
    """``ValueError`` when the temperature of ``results`` (read from ``source``) may not be applied to
    ``checkpoint``: fitted on another checkpoint (hash, else path), or flagged."""
    temperature = results.get('temperature')
    if temperature in (None, '') or (temperature == 1.0 and not results.get('temperature_split')):
        return  # no temperature, or the uncalibrated model's 1.0 (every results row has the column)
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
    if results.get('temperature_flag') or results.get('temperature_at_bound') is True:
        raise ValueError(f'{source}: the temperature {results["temperature"]!r} is flagged '
                         f'({results.get("temperature_flag") or "at the search bound"}); fit it on a larger held-out '
                         'split')
