"""Admission: swarm-secret credentials on every gRPC call, a deny-by-default interceptor, TLS files.

Every call carries four metadata entries: the caller's peer id, a Unix time in milliseconds, a
random nonce and ``HMAC-SHA256(key, peer id | method | time | nonce)``. The key is derived from
the swarm secret with HKDF (salt: the run id, info: the purpose), so one secret gives unrelated
keys to different runs and to the RPC and DHT layers. The server refuses, with UNAUTHENTICATED
and before any handler runs, every call whose credential is missing, malformed, forged, older or
newer than ``security.credential_window_s``, or seen before (nonces are remembered for the
window in a bounded cache, see :class:`Verifier`). Every field must match a
strict ASCII pattern of bounded length before anything else looks at it. A refused call is
answered without deserializing a byte of its body (the refusing handler takes raw bytes).

Limit: the secret is shared, so a credential proves swarm membership, not which member is
calling; a member can claim another's peer id. Per-peer identity on gRPC needs mTLS with
per-peer certificates (``security.tls_*``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from peerd.core.config import SecurityConfig
from peerd.core.log import RemoteLog

H_PEER, H_TIME, H_NONCE, H_MAC = "x-peerd-peer", "x-peerd-time", "x-peerd-nonce", "x-peerd-mac"
MAX_PEER_CHARS = 128
# Field syntax, checked before any other use of a value. ASCII classes only: str.isdigit() also
# accepts "²" or fullwidth digits, which int() then rejects or reads.
_PEER_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_PEER_CHARS}}}")  # printable ASCII, no space
_TIME_RE = re.compile(r"[0-9]{1,15}")  # Unix milliseconds
_NONCE_RE = re.compile(r"[0-9A-Za-z_-]{16,64}")
_MAC_RE = re.compile(r"[0-9a-f]{64}")  # hex HMAC-SHA256


class AuthConfigError(ValueError):
    """The security section points at something unusable; the message says how to fix it."""


class CredentialError(ValueError):
    """A call's credential is refused; ``reason`` is a metric label."""

    def __init__(self, reason: str) -> None:
        """Remember the reason."""
        super().__init__(reason)
        self.reason = reason


def derive_key(secret: str, run_id: str, purpose: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the secret, salted with the run id, one 32-byte key per purpose."""
    prk = hmac.new(run_id.encode(), secret.encode(), hashlib.sha256).digest()
    return hmac.new(prk, f"peerd/{purpose}".encode() + b"\x01", hashlib.sha256).digest()


def resolve_secret(sec: SecurityConfig) -> str | None:
    """The swarm secret from ``security.secret`` or ``security.secret_file`` (None: open swarm).

    Raises:
        AuthConfigError: the secret file is unreadable or too short.
    """
    if sec.secret is not None:
        return sec.secret.get_secret_value()
    if sec.secret_file is None:
        return None
    try:
        text = Path(sec.secret_file).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not text"
        raise AuthConfigError(f"security.secret_file {sec.secret_file}: cannot read ({why}); create it with "
                              "`openssl rand -hex 32 > FILE` and copy it to every peer") from None
    if len(text) < 16:
        raise AuthConfigError(f"security.secret_file {sec.secret_file}: secret shorter than 16 characters; "
                              "use `openssl rand -hex 32 > FILE`")
    return text


def _mac(key: bytes, peer_id: str, method: str, t_ms: str, nonce: str) -> str:
    msg = "\x00".join((peer_id, method, t_ms, nonce)).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def credential(key: bytes, peer_id: str, method: str, now: float | None = None,
               nonce: str | None = None) -> tuple[tuple[str, str], ...]:
    """GRPC metadata that admits one call of ``method`` (full name, e.g. ``/peerd.v1.Peer/PushShard``)."""
    t_ms = str(int((time.time() if now is None else now) * 1000))
    nonce = nonce or secrets.token_hex(16)
    return ((H_PEER, peer_id), (H_TIME, t_ms), (H_NONCE, nonce), (H_MAC, _mac(key, peer_id, method, t_ms, nonce)))


class Verifier:
    """Checks credentials against one key, with a time window and a bounded replay cache.

    The cache remembers each admitted nonce until its credential leaves the window. One peer id
    may hold at most ``cache_size // 16`` of it (at least 16): a member flooding admitted calls
    is refused (``replay_quota``) before it fills the cache. Members can claim many ids, so a
    full cache forgets its oldest nonce rather than refuse everyone (the refusal let one member
    lock the whole swarm out for a window). Forgetting only matters to a replayer who captured
    that credential (TLS prevents it) and only while a member floods; ``evicted`` counts it.
    """

    def __init__(self, key: bytes, window_s: float, cache_size: int, clock: Callable[[], float] = time.time) -> None:
        """``clock`` is injectable for tests."""
        self.key, self.window_s, self.cache_size, self.clock = key, window_s, cache_size, clock
        self.peer_quota = max(16, cache_size // 16)
        self._seen: dict[str, float] = {}  # nonce -> time after which it can no longer be replayed
        self._order: deque[tuple[float, str, str]] = deque()  # (until, nonce, peer), in admission order
        self._per_peer: dict[str, int] = {}
        self.evicted = 0

    def _forget_head(self) -> None:
        _until, nonce, peer = self._order.popleft()
        del self._seen[nonce]
        left = self._per_peer[peer] - 1
        if left:
            self._per_peer[peer] = left
        else:
            del self._per_peer[peer]

    def _remember(self, nonce: str, peer: str, until: float, now: float) -> None:
        # Expired entries leave from the head: O(1) per call, never a scan of the whole cache.
        # (Admission order is close to expiry order; a future-dated head only delays the rest.)
        while self._order and self._order[0][0] < now:
            self._forget_head()
        if self._per_peer.get(peer, 0) >= self.peer_quota:
            raise CredentialError("replay_quota")
        while len(self._seen) >= self.cache_size:
            self._forget_head()
            self.evicted += 1
        self._seen[nonce] = until
        self._order.append((until, nonce, peer))
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1

    def check(self, metadata: Iterable[tuple[str, Any]], method: str) -> str:
        """Return the caller's (claimed) peer id.

        Raises:
            CredentialError: reason ``missing``, ``malformed``, ``bad_mac``, ``expired``, ``replay``
                or ``replay_quota``.
        """
        md: dict[str, Any] = {}
        for k, v in metadata:
            if k in (H_PEER, H_TIME, H_NONCE, H_MAC):
                if k in md:
                    raise CredentialError("malformed")
                md[k] = v
        if len(md) < 4:
            raise CredentialError("missing")
        peer, t_ms, nonce, mac = md[H_PEER], md[H_TIME], md[H_NONCE], md[H_MAC]
        fields = ((peer, _PEER_RE), (t_ms, _TIME_RE), (nonce, _NONCE_RE), (mac, _MAC_RE))
        if not all(isinstance(v, str) and pattern.fullmatch(v) for v, pattern in fields):
            raise CredentialError("malformed")
        if not hmac.compare_digest(mac, _mac(self.key, peer, method, t_ms, nonce)):
            raise CredentialError("bad_mac")
        now, t = self.clock(), int(t_ms) / 1000.0
        if abs(now - t) > self.window_s:
            raise CredentialError("expired")
        if nonce in self._seen:
            raise CredentialError("replay")
        self._remember(nonce, peer, t + self.window_s, now)
        return peer


def caller(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """Peer id named in a call's credential (verified by the interceptor when a secret is set)."""
    for k, v in metadata or ():
        if k == H_PEER and isinstance(v, str):
            return v
    return None


def host_of(peer: str) -> str:
    """Address part of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``) for per-address caps."""
    return peer.rsplit(":", 1)[0]


def _deny_handler(handler: grpc.RpcMethodHandler | None, reason: str, method: str,
                  remote_log: RemoteLog | None) -> grpc.RpcMethodHandler:
    """A handler of the same kind that refuses at once; it takes raw bytes, so nothing is parsed."""
    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
        if remote_log is not None:
            remote_log.event(f"credential_{reason}", host_of(context.peer() or ""), "call refused: no valid credential",
                             level=logging.INFO, method=method[:80])
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"credential refused: {reason}")

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    # An unknown method is refused as a unary one: still UNAUTHENTICATED, never a hint of what exists.
    shape = (False, False) if handler is None else (bool(handler.request_streaming), bool(handler.response_streaming))
    # No deserializer and no serializer: the body stays raw bytes, never handed to protobuf.
    return kinds[shape](deny, request_deserializer=None, response_serializer=None)


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Deny by default: no call of any kind reaches a handler without a valid credential."""

    def __init__(self, verifier: Verifier, on_refused: Callable[[str], None],
                 remote_log: RemoteLog | None = None) -> None:
        """``on_refused(reason)`` counts refusals; ``remote_log`` logs them, rate-limited."""
        self.verifier = verifier
        self.on_refused = on_refused
        self.remote_log = remote_log

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Check the credential, then hand over to the real handler or to one that refuses."""
        method = handler_call_details.method
        try:
            self.verifier.check(handler_call_details.invocation_metadata or (), method)
        except CredentialError as exc:
            reason = exc.reason
        except Exception:  # a bug here must still refuse (never UNKNOWN), and say where it is
            reason = "malformed"
            if self.remote_log is not None:
                self.remote_log.event("credential_check_error", "", "credential check failed", exc_info=True)
        else:
            return await continuation(handler_call_details)
        self.on_refused(reason)
        return _deny_handler(await continuation(handler_call_details), reason, method, self.remote_log)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AuthConfigError(f"security.{what} {path}: cannot read ({exc.strerror}); "
                              "fix the path or unset it") from None


def server_credentials(sec: SecurityConfig) -> grpc.ServerCredentials | None:
    """TLS (mTLS when ``tls_ca`` is set) for the server; None without ``tls_cert``."""
    if sec.tls_cert is None or sec.tls_key is None:
        return None
    ca = _read(sec.tls_ca, "tls_ca") if sec.tls_ca else None
    pair = (_read(sec.tls_key, "tls_key"), _read(sec.tls_cert, "tls_cert"))
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(sec: SecurityConfig) -> grpc.ChannelCredentials | None:
    """TLS for outgoing channels (presents this peer's cert for mTLS); None without ``tls_cert``."""
    if sec.tls_cert is None or sec.tls_key is None:
        return None
    ca = _read(sec.tls_ca, "tls_ca") if sec.tls_ca else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=_read(sec.tls_key, "tls_key"),
                                        certificate_chain=_read(sec.tls_cert, "tls_cert"))
