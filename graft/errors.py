"""User-facing errors.

A `GraftError` is a problem with the user's input or environment (a missing folder, no weights
offline, a corrupt model file). The CLI prints its message on one line and exits non-zero, without
a traceback; anything else is a bug and keeps its traceback.
"""


class GraftError(Exception):
    """A problem the user can fix; its message says what and how."""


class ImageError(GraftError):
    """One image file cannot be used; the run skips it and reports `path` and `reason`."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # cross loader-worker process boundaries intact
        return (type(self), (self.path, self.reason))


class WeightsError(GraftError):
    """Pretrained weights are missing, unreadable or fail their checksum."""
