"""A static HTTP server over a folder for tests of remote data: Python's ``http.server`` on a free port, in a thread.

``cut`` names files the server announces whole but cuts off after half their bytes (a transfer that breaks).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    cut: frozenset[str] = frozenset()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # noqa: ANN001 - http.server's signature
        if Path(self.path).name in self.cut:
            payload = source.read()
            outputfile.write(payload[: len(payload) // 2])
            self.close_connection = True
            return
        super().copyfile(source, outputfile)


@contextlib.contextmanager
def serve(folder: Path, cut: set[str] | None = None) -> Iterator[str]:
    """Serve ``folder``; yields the base URL ``http://127.0.0.1:PORT``."""
    handler = type("Handler", (_Handler,), {"cut": frozenset(cut or ())})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
