"""A newcomer says so in its record (``new``), so that peers ordering plan slots by their views leave it out."""

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
