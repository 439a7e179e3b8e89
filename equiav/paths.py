"""Checks of the file paths users pass to the front-ends, done before anything is opened.

A path may name a directory, a FIFO (opening it would block until a writer appears), a symbolic link loop, or be a
URL (which is never fetched); each gets its own reason instead of a generic "not found". Names that are not valid
UTF-8 (undecodable bytes kept as surrogate escapes) are shown with ``repr`` so that error messages stay printable.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def shown(path: str | os.PathLike) -> str:
    """``path`` as error messages show it: as typed, or its ``repr`` when it cannot be encoded as UTF-8."""
    text = os.fsdecode(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return repr(text)
    return text


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a readable regular file, completing "the path ...", or None when it is one."""
    text = os.fsdecode(path)
    if _URL.match(text):
        return "is a URL; URLs are not fetched: download the file and pass its local path"
    try:
        mode = os.stat(text).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be accessed ({error.strerror})"
    except ValueError as error:
        return f"is not a valid file name ({error})"
    if stat.S_ISDIR(mode):
        return "is a directory"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO, socket or device)"
    return None


def as_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path (bytes are decoded with the file system's surrogate escapes)."""
    return Path(os.fsdecode(path))
