"""Evaluation reads every image once: an unreadable image is an error naming the file, never replaced.

timm's ``ImageDataset`` replaces an image it cannot read by the next one (right for training, where an epoch only
needs images); in an evaluation that scores the next image twice and the unreadable one never, so the metrics are of
another split. :func:`strict_images` makes an opened evaluation split refuse instead.
"""
import logging
import threading

from timm.data import ImageDataset

from timm_mimo.data import DataError

__all__ = ['UnreadableImage', 'StrictImageDataset', 'strict_images']

_reading = threading.local()


class UnreadableImage(DataError):
    """An image of an evaluation split that cannot be read (one line, also when re-raised from a loader worker)."""

    def __init__(self, message: str):
        if 'Original Traceback' in message:  # a DataLoader worker's re-raise: keep the error's own line
            message = message.strip().splitlines()[-1].split(': ', 1)[-1]
        super().__init__(message)


class _SkippedSampleFilter(logging.Filter):
    """Drops timm's "Skipped sample" warning for the read that :class:`StrictImageDataset` turns into an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_reading, 'strict', False)


class StrictImageDataset(ImageDataset):
    """timm's ``ImageDataset`` whose unreadable image raises :class:`UnreadableImage` (no retry on the next one)."""

    def __getitem__(self, index: int):
        self._max_retries = 1
        _reading.strict = True
        try:
            return super().__getitem__(index)
        except RuntimeError as exc:
            if 'consecutive samples' not in str(exc):
                raise
            name = self.reader.filename(index, absolute=True)
            raise UnreadableImage(f'image {str(name)!r} (index {index} of the split) cannot be read: an evaluation '
                                  'scores every image once; remove or replace the file') from None
        finally:
            _reading.strict = False


logging.getLogger('timm.data.dataset').addFilter(_SkippedSampleFilter())


def strict_images(dataset):
    """``dataset`` (timm's ``ImageDataset`` of an evaluation split) made a :class:`StrictImageDataset`; other data
    sets are returned as they are."""
    if type(dataset) is ImageDataset:
        dataset.__class__ = StrictImageDataset
    return dataset
