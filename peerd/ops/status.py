"""``peerd status``: read local daemons' admin endpoints and render them (client side only).

The table fits an 80-column terminal: peer ids and hashes are shortened (the full ones are in
``--json``), long cells wrap instead of being cut, and the reasons behind a non-healthy state are
printed under the table in full.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from peerd.node.admin import discover


def get_status(address: str, timeout_s: float = 3.0) -> tuple[dict[str, Any] | None, str]:
    """(status body, "") or (None, why it could not be read)."""
    try:
        with urllib.request.urlopen(f"http://{address}/status", timeout=timeout_s) as resp:
            body = json.loads(resp.read())
    except urllib.error.URLError as exc:
        return None, str(getattr(exc.reason, "strerror", None) or exc.reason)
    except (OSError, ValueError) as exc:
        return None, str(getattr(exc, "strerror", None) or exc)
    return (body, "") if isinstance(body, dict) else (None, "not a peerd status")


def fetch_statuses(admin: str | None) -> list[dict[str, Any]]:
    """Status of the daemon at ``admin``, or of every discovered local daemon.

    An address that does not answer gives ``{"admin", "healthy": False, "health": "unreachable",
    "error"}``.
    """
    addresses = [admin] if admin else [rec["admin"] for rec in discover() if isinstance(rec.get("admin"), str)]
    out = []
    for addr in addresses:
        body, why = get_status(addr)
        out.append(body if body is not None else {"admin": addr, "healthy": False, "health": "unreachable",
                                                  "error": why})
    return out


def short_id(peer_id: Any) -> str:
    """``…`` and the last 6 characters of a peer id (enough to tell a swarm's peers apart)."""
    text = str(peer_id or "?")
    return text if len(text) <= 8 else "…" + text[-6:]


def rate(bps: Any) -> str:
    """Bytes per second in kB/s or MB/s."""
    if not isinstance(bps, (int, float)):
        return "-"
    return f"{bps / 1e6:.1f}M" if bps >= 1e6 else f"{bps / 1e3:.0f}k"


def _loss(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def health_of(s: dict[str, Any]) -> str:
    """The state word (older daemons only had the boolean)."""
    return str(s.get("health") or ("healthy" if s.get("healthy") else "unhealthy"))


def render(statuses: list[dict[str, Any]], console: Console | None = None) -> None:
    """Rich table, one row per daemon, then why any of them is not healthy."""
    console = console or Console()
    if not statuses:
        console.print("no running peerd daemon found (start one with `peerd join`)")
        return
    runs = sorted({str(s.get("run_id")) for s in statuses if s.get("run_id")})
    table = Table(title="peerd status" + (f" — run {', '.join(runs)}" if runs else ""), box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, padding=0)
    # Numbers and ids never wrap or get cut; only the last round's reason folds onto more lines.
    for col, kw in (("peer", {}), ("health", {}), ("peers", {"justify": "right"}), ("link", {}),
                    ("step", {"justify": "right"}), ("loss", {"justify": "right"}), ("ok/ab", {}),
                    ("last round", {"overflow": "fold", "ratio": 1}),
                    ("tx/rx /s", {}), ("rev", {"justify": "right"}), ("hash", {})):
        table.add_column(col, no_wrap=col != "last round", min_width=None if col == "last round" else len(col), **kw)
    notes = []
    for s in statuses:
        last = s.get("last_round") or {}
        who = short_id(s.get("peer_id")) if s.get("peer_id") else str(s.get("admin"))
        state = health_of(s)
        for why in s.get("health_reasons") or ([s["error"]] if s.get("error") else []):
            notes.append(f"{who}: {state}: {why}")
        if state == "unreachable":
            continue
        table.add_row(
            who, state if state == "healthy" else f"[bold red]{state}[/]", str(s.get("swarm_size", "-")),
            str((s.get("reachability") or {}).get("mode", "-")), str(s.get("step", "-")), _loss(s.get("loss")),
            f"{s.get('rounds_committed', '-')}/{s.get('rounds_aborted', '-')}",
            f"{last.get('outcome', '-')} {last.get('reason', '')}".strip() if last else "-",
            f"{rate(s.get('tx_bytes_per_s'))}/{rate(s.get('rx_bytes_per_s'))}", str(s.get("revision", "-")),
            str(s.get("state_hash") or "-")[:6],
        )
    if table.row_count:
        console.print(table)
    for line in notes:
        console.print(line, soft_wrap=False)
    for s in statuses:  # a peer others cannot dial takes part in rounds but reduces nothing: say how that was found
        reach = s.get("reachability") or {}
        if reach.get("mode") == "client":
            console.print(f"{short_id(s.get('peer_id'))}: client mode (not dialable: {reach.get('how', '')})",
                          soft_wrap=False)
        if reach.get("dht") == "unreachable":
            console.print(f"{short_id(s.get('peer_id'))}: DHT port not reachable ({reach.get('dht_how', '')}): "
                          "forward it too and set dht.announce_host", soft_wrap=False)
