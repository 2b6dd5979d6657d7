"""Admission on a real gRPC server (127.0.0.1): only callers holding the swarm secret get in.

The receiving side is the daemon's Diloco sink behind the real Transport with a swarm key; the
honest sender is a second real Transport (the daemon's client code path), hostile ones are plain
gRPC clients or raw sockets, so every credential field and every byte can be wrong.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from peerd.core.config import SecurityConfig
from peerd.net import auth
from peerd.net.transport import FETCH_METHOD, PUSH_METHOD, Transport
from peerd.proto.v1 import peer_pb2, peer_pb2_grpc
from tests.integration.test_bad_streams import Harness, good_header, open_plan

SECRET = "swarm-secret-0123456789"
KEY = auth.derive_key(SECRET, "peerd", "rpc")


class SecureHarness(Harness):
    def __init__(self, security: SecurityConfig | None = None, key: bytes | None = KEY) -> None:
        super().__init__()
        self.refused: list[str] = []
        self.transport = Transport(self.cfg.transport, lambda d, n: None, self.rejected.append,
                                   security=security, key=key, peer_id="me", on_refused=self.refused.append)


def client(security: SecurityConfig | None = None, key: bytes | None = KEY, peer_id: str = "other") -> Transport:
    h = Harness()
    return Transport(h.cfg.transport, lambda d, n: None, lambda r: None,
                     security=security, key=key, peer_id=peer_id)


@pytest.fixture
async def secure() -> AsyncIterator[SecureHarness]:
    h = SecureHarness()
    await h.transport.start(h.diloco)
    yield h
    await h.transport.stop(0)


async def raw_push(h: Harness, header: peer_pb2.ShardHeader, payload: bytes, metadata=None) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{h.transport.port}") as ch:
        async def gen():
            yield peer_pb2.ShardChunk(header=header)
            yield peer_pb2.ShardChunk(data=payload)

        await peer_pb2_grpc.PeerStub(ch).PushShard(gen(), timeout=10, metadata=metadata)


async def refused_code(coro) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    return err.value.code()


async def test_only_valid_fresh_credentials_get_in_streaming_included(secure: SecureHarness) -> None:
    h = secure
    plan = open_plan(h)
    before = h.state.state_hash()
    header, payload = good_header(h, plan)
    wrong = auth.derive_key("not-the-swarm-secret!", "peerd", "rpc")
    cases = {
        "no credential": None,
        "wrong secret": auth.credential(wrong, "other", PUSH_METHOD),
        "expired": auth.credential(KEY, "other", PUSH_METHOD, now=time.time() - 120),
        "from the future": auth.credential(KEY, "other", PUSH_METHOD, now=time.time() + 120),
        "for another method": auth.credential(KEY, "other", FETCH_METHOD),
    }
    for name, md in cases.items():
        assert await refused_code(raw_push(h, header, payload, md)) == grpc.StatusCode.UNAUTHENTICATED, name
    # Server-streaming FetchState is gated too, and so is a method the server does not have.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{h.transport.port}") as ch:
        call = peer_pb2_grpc.PeerStub(ch).FetchState(peer_pb2.FetchStateRequest(run_id="peerd"), timeout=10)
        assert await refused_code(call.read()) == grpc.StatusCode.UNAUTHENTICATED
        offer = peer_pb2_grpc.PeerStub(ch).OfferPlan(peer_pb2.PlanOffer(round=plan.round, publisher="x"), timeout=10)
        assert await refused_code(offer) == grpc.StatusCode.UNAUTHENTICATED
        unknown = ch.unary_unary("/peerd.v1.Peer/Admin")
        assert await refused_code(unknown(b"", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    assert h.diloco.inbox.get(plan.round).contributions == {}
    # An honest member with the secret gets in; replaying its exact credential does not.
    md = auth.credential(KEY, "other", PUSH_METHOD)
    await raw_push(h, header, payload, md)
    assert "other" in h.diloco.inbox.get(plan.round).contributions
    assert await refused_code(raw_push(h, header, payload, md)) == grpc.StatusCode.UNAUTHENTICATED
    assert h.state.state_hash() == before
    assert sorted(set(h.refused)) == ["bad_mac", "expired", "missing", "replay"]
    assert len(h.refused) == 9  # 5 pushes, FetchState, OfferPlan, the unknown method, the replay


async def test_honest_transport_client_pushes_and_fetches_state(secure: SecureHarness) -> None:
    h = secure
    plan = open_plan(h)
    header, payload = good_header(h, plan)
    c = client()
    try:
        await c.push_shard(f"127.0.0.1:{h.transport.port}", header, payload, 10)
        assert "other" in h.diloco.inbox.get(plan.round).contributions
        req = peer_pb2.FetchStateRequest(run_id="peerd", requester="other")
        state_header, data = await c.fetch_state(f"127.0.0.1:{h.transport.port}", req, max_bytes=1 << 24)
        assert state_header.total_bytes == len(data) > 0
        # Same client, wrong secret: refused.
        bad = client(key=auth.derive_key("another-secret-entirely", "peerd", "rpc"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bad.fetch_state(f"127.0.0.1:{h.transport.port}", req, max_bytes=1 << 24)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await bad.stop(0)
    finally:
        await c.stop(0)
    assert h.refused == ["bad_mac"]


async def test_header_sender_must_match_the_credential(secure: SecureHarness) -> None:
    plan = open_plan(secure)
    header, payload = good_header(secure, plan)
    md = auth.credential(KEY, "someone-else", PUSH_METHOD)
    assert await refused_code(raw_push(secure, header, payload, md)) == grpc.StatusCode.PERMISSION_DENIED
    assert secure.diloco.inbox.get(plan.round).contributions == {}


async def test_per_peer_stream_cap_and_stalled_streams_are_cut() -> None:
    h = SecureHarness(SecurityConfig(max_streams_per_peer=2))
    await h.transport.start(h.diloco)
    try:
        plan = open_plan(h)
        header, _ = good_header(h, plan)
        release = asyncio.Event()

        async def stalled() -> grpc.StatusCode:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{h.transport.port}") as ch:
                async def gen():
                    yield peer_pb2.ShardChunk(header=header)
                    await release.wait()  # never sends the payload

                call = peer_pb2_grpc.PeerStub(ch).PushShard(gen(), timeout=20,
                                                            metadata=auth.credential(KEY, "other", PUSH_METHOD))
                try:
                    await call
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

        t0 = time.monotonic()
        first = [asyncio.create_task(stalled()) for _ in range(2)]
        deadline = time.monotonic() + 10
        while h.transport.limits.active("other")[0] < 2:
            assert time.monotonic() < deadline, "the two streams never became active"
            await asyncio.sleep(0.02)
        assert await stalled() == grpc.StatusCode.RESOURCE_EXHAUSTED  # a third one is refused at once
        # The stalled ones are cut by the per-chunk timeout (2 s in the harness), not the 20 s deadline.
        assert await asyncio.gather(*first) == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
        assert time.monotonic() - t0 < 10
        release.set()
        assert h.transport.limits.active("other") == (0, 0)
        assert "resource_exhausted" in h.rejected and h.rejected.count("chunk_timeout") == 2
    finally:
        await h.transport.stop(0)


def _garbage_connections(port: int) -> list[socket.socket]:
    socks = []
    payloads = [os.urandom(4096), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\xff\xff\x04" + os.urandom(512), b""]
    for data in payloads * 4:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if data:
            s.sendall(data)
        socks.append(s)  # left open: half-open / idle connections
    return socks


async def test_garbage_bytes_and_half_open_connections_leave_the_peer_serving(secure: SecureHarness) -> None:
    socks = await asyncio.to_thread(_garbage_connections, secure.transport.port)
    try:
        socks[0].shutdown(socket.SHUT_WR)  # half-closed by the client
        plan = open_plan(secure)
        header, payload = good_header(secure, plan)
        c = client()
        try:
            await asyncio.wait_for(c.push_shard(f"127.0.0.1:{secure.transport.port}", header, payload, 10), 15)
        finally:
            await c.stop(0)
        assert "other" in secure.diloco.inbox.get(plan.round).contributions
    finally:
        for s in socks:
            s.close()


def _self_signed(tmp: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peerd-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("peerd.test"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return str(tmp / "cert.pem"), str(tmp / "key.pem")


async def test_mutual_tls_with_operator_certificates(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    sec = SecurityConfig(tls_cert=cert, tls_key=key, tls_ca=cert, tls_server_name="peerd.test")
    h = SecureHarness(sec)
    await h.transport.start(h.diloco)
    c = client(sec)
    try:
        plan = open_plan(h)
        header, payload = good_header(h, plan)
        await c.push_shard(f"127.0.0.1:{h.transport.port}", header, payload, 10)
        assert "other" in h.diloco.inbox.get(plan.round).contributions
        # Plaintext, and TLS without a client certificate, do not get through the handshake.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_push(h, header, payload, auth.credential(KEY, "other", PUSH_METHOD))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        creds = grpc.ssl_channel_credentials(root_certificates=Path(cert).read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{h.transport.port}", creds,
                                           options=[("grpc.ssl_target_name_override", "peerd.test")]) as ch:
            call = peer_pb2_grpc.PeerStub(ch).FetchState(peer_pb2.FetchStateRequest(run_id="peerd"), timeout=5,
                                                         metadata=auth.credential(KEY, "other", FETCH_METHOD))
            assert await refused_code(call.read()) == grpc.StatusCode.UNAVAILABLE
    finally:
        await c.stop(0)
        await h.transport.stop(0)
