"""Record fields for plans: a newcomer says so (``new``); a peer not yet in its rounds says from which (``from``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peerd.net.peer_record import PeerRecord


def _record(newcomer: bool) -> PeerRecord:
    return PeerRecord("p", "198.18.0.2:5000", 1, 2, "x", ("a", "b"), 1.0, 3, True, False, newcomer=newcomer)


def test_the_newcomer_flag_round_trips_and_is_written_only_while_true() -> None:
    rec = _record(True)
    value = rec.to_value()
    assert value["new"] is True and value["v"] == 1
    assert PeerRecord.from_value("p", value) == rec and PeerRecord.from_value("p", value).candidate().newcomer
    veteran = replace(rec, newcomer=False)
    assert "new" not in veteran.to_value()  # byte-compatible with readers older than the field
    assert not PeerRecord.from_value("p", veteran.to_value()).candidate().newcomer


@pytest.mark.parametrize("bad", [1, "yes", None, [True]])
def test_a_newcomer_flag_of_another_type_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="wrong type"):
        PeerRecord.from_value("p", _record(True).to_value() | {"new": bad})


def test_the_first_round_round_trips_and_is_written_only_while_pending() -> None:
    rec = replace(_record(False), from_round=900_000_123)
    value = rec.to_value()
    assert value["from"] == 900_000_123
    assert PeerRecord.from_value("p", value).candidate().from_round == 900_000_123
    assert "from" not in _record(False).to_value()  # running: byte-compatible with older readers
    assert PeerRecord.from_value("p", _record(False).to_value()).from_round == 0


@pytest.mark.parametrize("bad", [True, -1, 1 << 40, 2.5, "9"])
def test_a_first_round_out_of_range_or_of_another_type_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="wrong type|out of range"):
        PeerRecord.from_value("p", _record(False).to_value() | {"from": bad})
