"""Readable run logs: the INFO chatter of orbax, grain and TFDS is dropped."""

from __future__ import annotations

import logging as pylogging
import os

from absl import logging


class _QuietLibraries(pylogging.Filter):
    """Drops the INFO chatter of orbax, grain and TFDS (one line per file written)."""

    NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}grain{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or not any(n in record.pathname
                                                              for n in self.NOISY)


def quiet_library_logs() -> None:
    """Keeps the run's log readable: library INFO lines from orbax, grain and TFDS are
    dropped (warnings and errors still show)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
