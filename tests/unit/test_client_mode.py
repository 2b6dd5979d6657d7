"""Client mode pieces: plans with client members, v1/v2 records, the pacer, and dial-backs over gRPC."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import grpc
import pytest
import structlog

from peerd.core import schedule as sch
from peerd.core.config import TransportConfig
from peerd.net.pacing import Pacer
from peerd.net.peer_record import PeerRecord
from peerd.net.transport import DialBackResult, Transport
from peerd.net.wire import address_of
from peerd.proto.v1 import peer_pb2


def _cand(pid: str, reachable: bool = True) -> sch.Candidate:
    return sch.Candidate(pid, f"h:{pid}", 3, "hash", True, False, reachable)


def _plan(cands: list[sch.Candidate], publisher: str = "a") -> sch.RoundPlan | None:
    return sch.make_plan("run", 10, 2, publisher, cands, 5.0, 0.9, 50.0)


def test_clients_come_last_and_own_no_shard() -> None:
    plan = _plan([_cand("a"), _cand("b", False), _cand("c"), _cand("d", False)])
    assert plan is not None and plan.clients == 2 and plan.owners == 2
    assert set(plan.members[:2]) == {"a", "c"} and set(plan.members[2:]) == {"b", "d"}
    assert plan.is_client("b") and not plan.is_client("a")
    back = sch.plan_from_record(plan.to_record(), "run", 2)
    assert back == plan and back.plan_id == plan.plan_id


def test_plan_without_clients_is_the_old_record() -> None:
    plan = _plan([_cand("a"), _cand("b")])
    assert plan is not None and "clients" not in plan.to_record()
    old = sch.RoundPlan(**{k: v for k, v in plan.to_record().items()})  # as a peer without client mode builds it
    assert old.plan_id == plan.plan_id


def test_no_reachable_member_no_plan() -> None:
    cands = [_cand("a", False), _cand("b", False)]
    assert _plan(cands) is None and not sch.has_owner(cands)


@pytest.mark.parametrize("clients", [0, 2, -1, True, 1.0])
def test_bad_clients_field_refused(clients: object) -> None:
    plan = _plan([_cand("a"), _cand("b")])
    assert plan is not None
    with pytest.raises(sch.PlanError):
        sch.plan_from_record(plan.to_record() | {"clients": clients}, "run", 2)


def _record(reachable: bool) -> PeerRecord:
    return PeerRecord("p", "h:1", 1, 2, "x", ("a", "b"), 1.0, 3, True, False, reachable)


def test_reachable_record_is_v1_and_client_record_is_v2() -> None:
    server, client = _record(True).to_value(), _record(False).to_value()
    assert server["v"] == 1 and "reachable" not in server
    assert client["v"] == 2 and client["reachable"] is False
    assert PeerRecord.from_value("p", server).reachable and not PeerRecord.from_value("p", client).reachable
    with pytest.raises(ValueError):
        PeerRecord.from_value("p", server | {"reachable": False})  # v1 has an exact field set
    with pytest.raises(ValueError):
        PeerRecord.from_value("p", client | {"reachable": "no"})
    with pytest.raises(ValueError):
        PeerRecord.from_value("p", {k: v for k, v in client.items() if k != "reachable"})


def test_upload_cap_is_a_v2_field_and_old_records_stay_readable() -> None:
    import dataclasses

    from peerd.net.peer_record import MAX_UPLINK_BPS
    from peerd.net.records import MAX_BODY_BYTES

    capped = dataclasses.replace(_record(True), uplink_bps=250_000).to_value()
    assert capped["v"] == 2 and capped["reachable"] is True and capped["uplink_bps"] == 250_000
    back = PeerRecord.from_value("p", capped)
    assert back.reachable and back.uplink_bps == 250_000
    client = dataclasses.replace(_record(False), uplink_bps=1).to_value()
    assert PeerRecord.from_value("p", client).uplink_bps == 1 and not PeerRecord.from_value("p", client).reachable
    # Uncapped records are exactly the v1/v2 records of before (and read as uncapped).
    assert "uplink_bps" not in _record(True).to_value() and "uplink_bps" not in _record(False).to_value()
    assert PeerRecord.from_value("p", _record(True).to_value()).uplink_bps == 0
    for bad in (-1, MAX_UPLINK_BPS + 1, True, 1.5, "9"):
        with pytest.raises(ValueError):
            PeerRecord.from_value("p", capped | {"uplink_bps": bad})
    with pytest.raises(ValueError):
        PeerRecord.from_value("p", _record(True).to_value() | {"uplink_bps": 5})  # v1 has an exact field set
    import msgpack

    assert len(msgpack.packb(capped)) < MAX_BODY_BYTES


def test_address_of_grpc_peer_strings() -> None:
    assert address_of("ipv4:198.18.0.4:5555") == "198.18.0.4"
    assert address_of("ipv6:[::1]:5555") == "::1"
    assert address_of("ipv6:%5B::1%5D:5555") == "::1"


def test_pacer_holds_the_rate() -> None:
    async def go() -> float:
        pacer = Pacer(8.0)  # 1 MB/s
        chunk = pacer.chunk_bytes(1 << 20)
        assert chunk == 100_000
        t0 = time.monotonic()
        await asyncio.gather(*(pacer.take(chunk) for _ in range(6)))
        return time.monotonic() - t0

    took = asyncio.run(go())
    assert took >= 0.45  # 600 kB at 1 MB/s less the one-chunk burst; never faster than the cap


class _Sink:
    async def admit(self, header: peer_pb2.ShardHeader) -> float:
        raise AssertionError("not used")

    async def deliver(self, header: peer_pb2.ShardHeader, payload: bytes) -> None:
        raise AssertionError("not used")

    async def state_for(self, request: peer_pb2.FetchStateRequest) -> tuple[peer_pb2.StateHeader, bytes]:
        raise AssertionError("not used")

    async def reduced_for(self, request: peer_pb2.PullRequest) -> tuple[peer_pb2.ShardHeader, bytes]:
        raise AssertionError("not used")


def _transport(peer_id: str) -> Transport:
    return Transport(TransportConfig(host="127.0.0.1", port=0), lambda d, n: None, lambda r: None, peer_id=peer_id)


def test_dial_back_over_grpc() -> None:
    async def go() -> tuple[DialBackResult, DialBackResult, DialBackResult, grpc.StatusCode]:
        helper, asker, silent = _transport("helper"), _transport("asker"), _transport("silent")
        hport, aport = await helper.start(_Sink()), await asker.start(_Sink())
        sport = silent.bind()  # bound but never serving: nothing answers the probe
        try:
            ok = await asker.dial_back(f"127.0.0.1:{hport}", f"127.0.0.1:{aport}", "run")
            # another host than the one it calls from: answered without dialling anywhere
            other = await silent.dial_back(f"127.0.0.1:{hport}", f"192.0.2.7:{sport}", "run")
            try:  # asked again at once
                await silent.dial_back(f"127.0.0.1:{hport}", f"192.0.2.7:{sport}", "run")
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            helper._dial_backs.clear()
            dead = await silent.dial_back(f"127.0.0.1:{hport}", f"127.0.0.1:{sport}", "run")
            return ok, other, dead, code
        finally:
            for t in (helper, asker, silent):
                await t.stop(0)

    ok, other, dead, code = asyncio.run(go())
    assert ok.reachable and "dialled back" in ok.detail and ok.dht_reachable is None  # no DHT port: unchecked
    assert not other.reachable and "calls from 127.0.0.1" in other.detail
    assert not dead.reachable and "failed" in dead.detail
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_new_methods_need_a_credential() -> None:
    from peerd.net import auth
    from peerd.proto.v1 import peer_pb2_grpc

    key = auth.derive_key("s" * 32, "run", "rpc")

    async def go() -> list[grpc.StatusCode]:
        server = Transport(TransportConfig(host="127.0.0.1", port=0), lambda d, n: None, lambda r: None,
                           key=key, peer_id="server")
        port = await server.start(_Sink())
        codes = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = peer_pb2_grpc.PeerStub(ch)
                calls = [stub.DialBack(peer_pb2.DialBackRequest(run_id="run", requester="x", endpoint="127.0.0.1:1"),
                                       timeout=10),
                         stub.Ping(peer_pb2.PingRequest(nonce=b"n"), timeout=10)]
                for call in calls:
                    try:
                        await call
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
                try:
                    async for _ in stub.PullShard(peer_pb2.PullRequest(run_id="run", requester="x"), timeout=10):
                        pass
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code())

                async def hand() -> Any:
                    yield peer_pb2.HandStateChunk(header=peer_pb2.HandStateHeader(run_id="run", donor="x"))

                try:
                    await stub.HandState(hand(), timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code())
        finally:
            await server.stop(0)
        return codes

    assert asyncio.run(go()) == [grpc.StatusCode.UNAUTHENTICATED] * 4


def test_dial_back_probes_the_callers_dht_port() -> None:
    """gRPC reachable but the DHT port closed is told apart from both reachable (the helper dials the caller's IP)."""
    async def go() -> tuple[DialBackResult, DialBackResult]:
        helper, asker = _transport("helper"), _transport("asker")
        hport, aport = await helper.start(_Sink()), await asker.start(_Sink())
        dht = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        dht_port = dht.sockets[0].getsockname()[1]
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: a connection is refused
        try:
            both = await asker.dial_back(f"127.0.0.1:{hport}", f"127.0.0.1:{aport}", "run", dht_port)
            helper._dial_backs.clear()
            grpc_only = await asker.dial_back(f"127.0.0.1:{hport}", f"127.0.0.1:{aport}", "run",
                                              closed.getsockname()[1])
            return both, grpc_only
        finally:
            closed.close()
            dht.close()
            await dht.wait_closed()
            for t in (helper, asker):
                await t.stop(0)

    both, grpc_only = asyncio.run(go())
    assert both.reachable and both.dht_reachable is True and "accepted" in both.dht_detail
    assert grpc_only.reachable and grpc_only.dht_reachable is False and "refused" in grpc_only.dht_detail


def test_reach_check_says_when_dht_is_unreachable() -> None:
    from peerd.net.reach import ReachCheck

    class _Net:
        async def dial_back(self, endpoint: str, mine: str, run_id: str, dht_port: int = 0) -> DialBackResult:
            assert dht_port == 4242
            return DialBackResult(True, "dialled back", False, "DHT port 1.2.3.4:4242 refused or silent")

    class _View:
        peer_id, endpoint, reachable = "me", "1.2.3.4:5", True
        records = {"h": _record(True)}

    check = ReachCheck("auto", _Net(), _View(), "run", dht_port=4242)  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        result = asyncio.run(check.detect())
    assert result.mode == "server" and result.dht == "unreachable"
    assert result.as_dict()["dht"] == "unreachable"
    warned = [e for e in logs if e["event"] == "dht_unreachable"]
    assert len(warned) == 1 and "forward TCP port 4242" in warned[0]["fix"]


def test_dht_port_from_multiaddrs() -> None:
    from peerd.node.daemon import dht_port_of

    assert dht_port_of(["/ip4/127.0.0.1/tcp/40123/p2p/QmX"]) == 40123
    assert dht_port_of(["/ip4/127.0.0.1/udp/9/quic", "/ip6/::1/tcp/7/p2p/Q"]) == 7
    assert dht_port_of([]) == 0 and dht_port_of(["/ip4/1.2.3.4/tcp/x"]) == 0
