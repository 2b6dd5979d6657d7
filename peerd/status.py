"""``peerd status``: read local daemons' admin endpoints and render them (client side only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console
from rich.table import Table

from peerd.admin import discover


def _get(address: str, timeout_s: float = 3.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{address}/status", timeout=timeout_s) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return body if isinstance(body, dict) else None


def fetch_statuses(admin: str | None) -> list[dict[str, Any]]:
    """Status of the daemon at ``admin``, or of every discovered local daemon."""
    addresses = [admin] if admin else [rec["admin"] for rec in discover() if isinstance(rec.get("admin"), str)]
    out = []
    for addr in addresses:
        body = _get(addr)
        out.append(body if body is not None else {"admin": addr, "healthy": False, "error": "unreachable"})
    return out


def _rate(bps: Any) -> str:
    return "-" if not isinstance(bps, (int, float)) else f"{bps / 1e6:.2f} MB/s"


def render(statuses: list[dict[str, Any]]) -> None:
    """Rich table, one row per daemon."""
    console = Console()
    if not statuses:
        console.print("no running peerd daemon found (start one with `peerd join`)")
        return
    table = Table(title="peerd status")
    for col in ("peer", "run", "healthy", "peers", "step", "loss", "last round", "tx", "rx", "revision", "hash"):
        table.add_column(col)
    for s in statuses:
        last = s.get("last_round") or {}
        loss = s.get("loss")
        table.add_row(
            str(s.get("peer_id") or s.get("admin"))[-10:], str(s.get("run_id", "-")),
            "yes" if s.get("healthy") else f"NO {s.get('error', '')}".strip(), str(s.get("swarm_size", "-")),
            str(s.get("step", "-")), f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
            f"{last.get('outcome', '-')} ({last.get('reason', '')})" if last else "-",
            _rate(s.get("tx_bytes_per_s")), _rate(s.get("rx_bytes_per_s")), str(s.get("revision", "-")),
            str(s.get("state_hash") or "-")[:12],
        )
    console.print(table)
