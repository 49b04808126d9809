"""User-facing errors.

A `GraftError` is a problem with the user's input or environment (a missing folder, no weights
offline, a corrupt model file). The CLI prints its message on one line and exits non-zero, without
a traceback; anything else is a bug and keeps its traceback.
"""


class GraftError(Exception):
    """A problem the user can fix; its message says what and how."""


# Why an image file cannot be used, as `ImageError.code`: programs (graft check, the training log)
# branch on these, never on the message, which is for people and may change.
IMAGE_ERROR_CODES = {
    "unreadable": "the file cannot be read (permissions, a broken link, an I/O error)",
    "symlink_loop": "a symbolic link that resolves to itself",
    "not_regular_file": "a device, socket or pipe: reading it could block or never end",
    "empty_file": "0 bytes",
    "not_an_image": "no supported image format recognised in its bytes",
    "unsupported_format": "an image, but of a format graft does not read",
    "extension_mismatch": "the content's format is not the one its extension names",
    "too_large": "more pixels than Pillow's limit, or than its bytes can hold (a decompression bomb)",
    "truncated": "the image data ends early",
    "undecodable": "the image data is damaged in another way",
    "not_a_photo": "decodes, but shows nothing or is a flat graphic (a placeholder)",
}


class ImageError(GraftError):
    """One image file cannot be used; the run skips it and reports `path` and `reason`.

    `code` (one of IMAGE_ERROR_CODES) says why for programs; `reason` says it for people.
    """

    def __init__(self, path, reason: str, code: str = "undecodable"):
        if code not in IMAGE_ERROR_CODES:
            raise ValueError(f"unknown ImageError code {code!r}")
        self.path = str(path)
        self.reason = reason
        self.code = code
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # cross loader-worker process boundaries intact
        return (type(self), (self.path, self.reason, self.code))


class WeightsError(GraftError):
    """Pretrained weights are missing, unreadable or fail their checksum."""
