"""Direct DHT dials: records announce their DHT addresses, and SwarmView.knit dials them once each.

Without these dials every DHT call between two peers went through a relay on the bootstrap peer
(bench.control_plane saw no DHT byte between any other pair).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from peerd.net.peer_record import MAX_DHT_MADDRS, PeerRecord
from peerd.net.view import REPING_EVERY_S, SwarmView, dialable_maddrs, maddrs_on_host
from tests.fakes import ManualClock


def _addr(host: str, pid: str, port: int = 4000) -> str:
    return f"/ip4/{host}/tcp/{port}/p2p/{pid}"


def _record(pid: str, host: str = "198.18.0.2", reachable: bool = True, addrs: tuple[str, ...] | None = None
            ) -> PeerRecord:
    dht = (_addr(host, pid),) if addrs is None else addrs
    return PeerRecord(pid, f"{host}:5000", 1, 2, "x", ("a", "b"), 1.0, 3, True, False, reachable, dht_maddrs=dht)


def test_dht_addresses_round_trip_and_are_optional() -> None:
    rec = _record("p")
    value = rec.to_value()
    assert value["dht"] == [_addr("198.18.0.2", "p")] and value["v"] == 1
    assert PeerRecord.from_value("p", value) == rec
    bare = replace(rec, dht_maddrs=())
    assert "dht" not in bare.to_value()
    assert PeerRecord.from_value("p", bare.to_value()) == bare


@pytest.mark.parametrize("dht", [
    "not-a-list",
    [7],
    ["/ip4/198.18.0.2/tcp/4000/p2p/someone-else"],  # an address for another peer id
    ["http://198.18.0.2/p2p/p"],  # not a multiaddr
    ["/ip4/198.18.0.2/tcp/4000/p2p/p"] * (MAX_DHT_MADDRS + 1),
    ["/ip4/" + "1" * 600 + "/p2p/p"],
])
def test_bad_dht_addresses_are_refused(dht: object) -> None:
    value = _record("p").to_value() | {"dht": dht}
    with pytest.raises(ValueError):
        PeerRecord.from_value("p", value)


def test_only_addresses_on_the_endpoint_host_are_dialled() -> None:
    addrs = (_addr("198.18.0.2", "p"), _addr("203.0.113.9", "p"), _addr("198.18.0.2", "p", 4001))
    assert dialable_maddrs(_record("p", addrs=addrs)) == (addrs[0], addrs[2])
    assert maddrs_on_host(addrs, "[198.18.0.2]:5000") == (addrs[0], addrs[2])
    assert maddrs_on_host(addrs, "example.org:5000") == ()


class _Dialer:
    """Records every dial; the peers in ``down`` do not answer."""

    invalid_records = 0

    def __init__(self) -> None:
        self.dials: list[list[str]] = []
        self.down: set[str] = set()

    async def connect(self, maddrs: list[str]) -> list[str]:
        self.dials.append(list(maddrs))
        pids = {a.rsplit("/p2p/", 1)[1] for a in maddrs}
        return sorted(pids - self.down)


def _view(dialer: _Dialer, clock: ManualClock) -> SwarmView:
    return SwarmView("me", "198.18.0.1:5000", 1, dialer, None, None, lambda: None, clock,  # type: ignore[arg-type]
                     1.0, 10.0, [], lambda: None, lambda live, invalid: None)


def test_knit_dials_each_new_peer_once_and_retries_only_failures() -> None:
    dialer, clock = _Dialer(), ManualClock()
    view = _view(dialer, clock)
    view.records = {"a": _record("a"), "b": _record("b", host="198.18.0.3"),
                    "c": _record("c", reachable=False),  # client mode: not dialable
                    "d": _record("d", addrs=(_addr("203.0.113.9", "d"),))}  # off its endpoint's host
    dialer.down = {"b"}
    assert asyncio.run(view.knit()) == 2
    assert sorted(a for dial in dialer.dials for a in dial) == sorted([_addr("198.18.0.2", "a"),
                                                                       _addr("198.18.0.3", "b")])
    dialer.dials.clear()
    assert asyncio.run(view.knit()) == 0  # a answered, b failed too recently
    clock.t += REPING_EVERY_S
    dialer.down = set()
    assert asyncio.run(view.knit()) == 1 and dialer.dials == [[_addr("198.18.0.3", "b")]]
    # New addresses (a restart on another port) are dialled again; a peer that left is forgotten,
    # so it is dialled again when it comes back.
    view.records["a"] = _record("a", addrs=(_addr("198.18.0.2", "a", 4002),))
    del view.records["b"]
    dialer.dials.clear()
    assert asyncio.run(view.knit()) == 1 and dialer.dials == [[_addr("198.18.0.2", "a", 4002)]]
    view.records["b"] = _record("b", host="198.18.0.3")
    assert asyncio.run(view.knit()) == 1
