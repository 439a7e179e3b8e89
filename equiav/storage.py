"""Where data lives: local paths, URLs of any fsspec file system and ``pipe:`` commands.

URLs (``https://``, ``s3://``, ``gs://``, ``memory://``, ...) are opened with fsspec: one interface for reading
and writing local files, HTTP and object stores, no external binary, and the stores as optional plugins
(``s3fs``, ``gcsfs``: ``pip install 'equiav[remote]'``). HTTP(S) is read as a stream (no range requests, so any
static file server works). ``pipe:CMD`` reads the standard output of a shell command through webdataset's
opener, which fails when the command exits with an error. Every failure is a ``StorageError`` naming the location.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.spec import AbstractFileSystem

from .errors import StorageError

PIPE = "pipe:"
REMOTE_EXTRA = "pip install 'equiav[remote]'"
_PROTOCOL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_STREAMED = ("http", "https")
_READ_ONLY = ("http", "https")
# The last file name in a location (a path, URL or shell command) that ends in .tar or .json.
_FILE_NAME = re.compile(r"[^/\s'\"=]+\.(?:tar|json)(?=$|[\s'\"?])")


def _transfer_errors() -> tuple[type[BaseException], ...]:
    """Errors of a failed transfer: OS errors, and aiohttp's (a cut HTTP body is not an ``OSError``)."""
    try:
        from aiohttp import ClientError
    except ImportError:
        return (OSError, ValueError, EOFError)
    return (OSError, ValueError, EOFError, ClientError)


TRANSFER_ERRORS = _transfer_errors()


def is_pipe(location: str) -> bool:
    return str(location).startswith(PIPE)


def protocol(location: str) -> str | None:
    """The URL scheme of ``location`` (``"s3"``, ``"https"``, ...), or None for a local path or a pipe."""
    match = _PROTOCOL.match(str(location))
    return match[1].lower() if match else None


def is_remote(location: str) -> bool:
    return is_pipe(location) or protocol(location) not in (None, "file")


def join(location: str | Path, name: str) -> str:
    """``name`` inside the folder ``location`` (a local folder or a URL prefix)."""
    location = str(location)
    if protocol(location) is not None:
        return location.rstrip("/") + "/" + name
    return str(Path(location) / name)


def replace_name(location: str, name: str) -> str:
    """``location`` with its last ``.tar`` / ``.json`` file name replaced by ``name``: the path, URL or command of a
    file beside it (``pipe:curl -s https://h/d/shards.json`` -> ``pipe:curl -s https://h/d/shard-000001.tar``)."""
    matches = list(_FILE_NAME.finditer(location))
    if not matches:
        raise StorageError(f"{location}: names no .tar or .json file whose neighbours could be found")
    last = matches[-1]
    return location[: last.start()] + name + location[last.end() :]


def file_name(location: str) -> str:
    """The last ``.tar`` / ``.json`` file name in ``location``."""
    matches = list(_FILE_NAME.finditer(location))
    if not matches:
        raise StorageError(f"{location}: names no .tar or .json file")
    return matches[-1][0]


def _missing_plugin(location: str, error: ImportError) -> StorageError:
    return StorageError(f"{location}: {error}; install the object-store extra: {REMOTE_EXTRA}")


def open_read(location: str) -> IO[bytes]:
    """A binary stream of ``location`` (a local path, URL or ``pipe:`` command)."""
    location = str(location)
    try:
        if is_pipe(location):
            from webdataset.gopen import gopen_pipe

            return gopen_pipe(location, "rb")
        options: dict[str, Any] = {"block_size": 0} if protocol(location) in _STREAMED else {}
        return fsspec.open(location, "rb", **options).open()
    except ImportError as error:
        raise _missing_plugin(location, error) from error
    except TRANSFER_ERRORS as error:
        raise StorageError(f"{location}: cannot open ({type(error).__name__}: {error})") from error


def read_bytes(location: str) -> bytes:
    """The whole content of ``location``."""
    try:
        with open_read(location) as stream:
            return stream.read()
    except StorageError:
        raise
    except TRANSFER_ERRORS as error:
        raise StorageError(f"{location}: cannot read ({type(error).__name__}: {error})") from error


def read_json(location: str) -> Any:
    """The JSON document at ``location``."""
    payload = read_bytes(location)
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StorageError(f"{location}: not valid JSON ({error})") from error


class Folder:
    """A writable folder: a local directory or an fsspec URL prefix (an object-store "folder").

    Files are written under a temporary name and moved into place when complete, so a reader or a resumed job never
    sees half a file (on object stores the move is a copy and a delete).
    """

    def __init__(self, location: str | Path) -> None:
        self.location = str(location)
        if is_pipe(self.location) or protocol(self.location) in _READ_ONLY:
            raise StorageError(
                f"{self.location}: cannot write here (read-only); write to a local folder or an object store "
                "(s3://, gs://, ...), which the readers also accept"
            )
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.location)
        except ImportError as error:
            raise _missing_plugin(self.location, error) from error
        self.fs: AbstractFileSystem
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except TRANSFER_ERRORS as error:
            raise StorageError(f"{self.location}: cannot create the folder ({error})") from error

    def path(self, name: str) -> str:
        """The file system path of ``name`` in this folder."""
        return self.root.rstrip("/") + "/" + name

    def url(self, name: str) -> str:
        """The location of ``name`` as users and readers name it."""
        return join(self.location, name)

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def list(self, pattern: str) -> list[str]:
        """Names of the files in this folder that match the glob ``pattern``."""
        return sorted(Path(p).name for p in self.fs.glob(self.path(pattern)))

    def open_write(self, name: str) -> IO[bytes]:
        """A stream that writes ``name`` under a temporary name; ``commit(name)`` moves it into place."""
        try:
            if "/" in name:
                self.fs.makedirs(self.path(name.rsplit("/", 1)[0]), exist_ok=True)
            return self.fs.open(self.path(name + ".partial"), "wb")
        except TRANSFER_ERRORS as error:
            raise StorageError(f"{self.url(name)}: cannot write ({error})") from error

    def commit(self, name: str) -> None:
        try:
            self.fs.mv(self.path(name + ".partial"), self.path(name))
        except TRANSFER_ERRORS as error:
            raise StorageError(f"{self.url(name)}: cannot move into place ({error})") from error

    def write_bytes(self, name: str, payload: bytes) -> None:
        """Write ``name`` whole (atomically)."""
        with self.open_write(name) as stream:
            stream.write(payload)
        self.commit(name)

    def write_json(self, name: str, document: Any) -> None:
        self.write_bytes(name, (json.dumps(document, indent=1) + "\n").encode())

    def read_json(self, name: str) -> Any:
        try:
            payload = self.fs.cat_file(self.path(name))
        except TRANSFER_ERRORS as error:
            raise StorageError(f"{self.url(name)}: cannot read ({error})") from error
        try:
            return json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise StorageError(f"{self.url(name)}: not valid JSON ({error})") from error
