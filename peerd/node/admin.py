"""Admin endpoint: a loopback-only HTTP server with ``GET /status`` (JSON), and its discovery file.

Served from a daemon thread with the standard library's ``ThreadingHTTPServer`` (the same model
as prometheus_client's exporter); it only reads a status snapshot the daemon refreshes, so it
never touches network objects of the loop thread. It refuses to bind anything but a loopback
address: status shows internals that are nobody else's business.

Each daemon also writes ``<state dir>/daemons/<peer_id>.json`` with its admin address and pid so
that ``peerd status`` finds local daemons without flags; the file is removed on exit and stale
files (dead pid) are ignored and cleaned up by readers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def state_dir() -> Path:
    """Per-user directory for discovery files (``$XDG_STATE_HOME/peerd`` or ``~/.local/state/peerd``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "peerd" / "daemons"


class AdminServer:
    """Serves ``/status`` and ``/healthz`` from ``snapshot()`` on a loopback address."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Bind at once; raises ValueError for a non-loopback host, OSError when the port is taken."""
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"admin.host: {host} is not a loopback address")
        snap = snapshot

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path not in ("/status", "/healthz"):
                    self.send_error(404)
                    return
                body = snap()
                code = 200 if self.path == "/status" or body.get("healthy") else 503
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # keep the daemon's log clean
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.address = f"{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="peerd-admin", daemon=True)
        self._thread.start()
        self._discovery: Path | None = None

    def advertise(self, peer_id: str, run_id: str) -> None:
        """Write the discovery file (best effort: a read-only home must not stop the daemon)."""
        path = state_dir() / f"{peer_id}.json"
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"admin": self.address, "pid": os.getpid(), "peer_id": peer_id,
                                       "run_id": run_id}))
            os.replace(tmp, path)
            self._discovery = path

    def stop(self) -> None:
        """Stop serving and remove the discovery file."""
        self._server.shutdown()
        self._server.server_close()
        if self._discovery is not None:
            with contextlib.suppress(OSError):
                self._discovery.unlink()


def discover() -> list[dict[str, Any]]:
    """Discovery records of live local daemons (stale ones are deleted)."""
    out = []
    for path in sorted(state_dir().glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            os.kill(int(rec["pid"]), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append(rec)
    return out
