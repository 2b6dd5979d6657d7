"""Signed DHT records: every value a daemon stores is sealed with its libp2p identity key.

Binding a record to its author: a libp2p peer id *is* the hash of the peer's public key (for RSA,
the sha2-256 multihash of the protobuf-encoded SubjectPublicKeyInfo), and the p2pd daemon proves
possession of that key on every connection. So a sealed record carries the author's public key
and an RSA-PSS signature, and the reader recomputes the peer id from the key and requires it to
equal the record's subkey: nobody can publish under another peer's subkey without its private
key. No trust-on-first-use is needed. The key is the p2pd identity hivemind generates (RSA 2048);
it is kept as ``checkpoint.dir/identity.key`` when there is a checkpoint directory.

The signed message covers the DHT key, the subkey, the record's expiration and the body bytes, so
a record cannot be moved to another key or have its lifetime extended by a replayer. With a swarm
secret, an HMAC under a key derived from it is added, so an outsider who can reach the DHT (it is
not gated by the secret) cannot get a self-signed record of its own accepted either.

Limits: a member holding the secret can mint any number of identities (Sybil); signatures only
stop it from speaking for someone else. Bodies are msgpack (no code-executing types).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Callable
from typing import Any

import base58
import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.proto import crypto_pb2
from hivemind.utils.serializer import MSGPackSerializer

SEAL_VERSION = 1
# Directory of the runs present in this DHT (a hash per run, no MAC so that a peer of another run or
# with another secret can tell the operator what is wrong); the only key sealed without the MAC.
RUNS_KEY = "peerd/v1/runs"
MAX_BODY_BYTES = 256 << 10
MAX_KEY_BYTES = 1024
RSA_EXPONENT = 65537  # what libp2p (go and hivemind) key generation uses
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_FIELDS = {"s": int, "body": bytes, "exp": float, "pk": bytes, "sig": bytes, "mac": bytes}


class RecordError(ValueError):
    """A DHT value is malformed, oversized, forged or signed for another key."""


def peer_id_of(public_key_der: bytes) -> str:
    """Base58 libp2p peer id of an RSA public key (DER SubjectPublicKeyInfo)."""
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=public_key_der).SerializeToString()
    return base58.b58encode(b"\x12\x20" + hashlib.sha256(encoded).digest()).decode()


def key_id(dht_key: str | bytes) -> bytes:
    """The DHT's id of a key (what storing nodes see), bytes passed through."""
    return dht_key if isinstance(dht_key, bytes) else DHTID.generate(source=dht_key).to_bytes()


def _message(dht_key: str | bytes, subkey: str, expiration: float, body: bytes) -> bytes:
    return b"\x00".join((b"peerd-record-v1", key_id(dht_key), subkey.encode(), struct.pack("<d", expiration), body))


class Signer:
    """This peer's identity key (the p2pd identity) and the swarm's record MAC key, if any."""

    def __init__(self, private_key: rsa.RSAPrivateKey, mac_key: bytes | None = None) -> None:
        """Use :meth:`from_identity_file` for the p2pd identity."""
        self._key = private_key
        self.mac_key = mac_key
        self.public_der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.peer_id = peer_id_of(self.public_der)

    @classmethod
    def from_identity_file(cls, path: str, mac_key: bytes | None = None) -> Signer:
        """Load a libp2p protobuf private-key file as written by hivemind (RSA).

        Raises:
            RecordError: not an RSA libp2p identity.
        """
        with open(path, "rb") as f:
            proto = crypto_pb2.PrivateKey.FromString(f.read())
        if proto.key_type != crypto_pb2.RSA:
            raise RecordError(f"{path}: identity key is not RSA")
        key = serialization.load_der_private_key(proto.data, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise RecordError(f"{path}: identity key is not RSA")
        return cls(key, mac_key)

    def seal(self, dht_key: str, body: dict[str, Any], expiration: float) -> dict[str, Any]:
        """The DHT value for ``body`` stored under ``dht_key`` / this peer's subkey until ``expiration``."""
        blob = msgpack.packb(body, use_bin_type=True)
        msg = _message(dht_key, self.peer_id, float(expiration), blob)
        sig = self._key.sign(msg, _PSS, hashes.SHA256())
        with_mac = self.mac_key is not None and dht_key != RUNS_KEY
        mac = hmac.new(self.mac_key, msg + sig, hashlib.sha256).digest() if with_mac else b""  # type: ignore[arg-type]
        return {"s": SEAL_VERSION, "body": blob, "exp": float(expiration), "pk": self.public_der, "sig": sig,
                "mac": mac}


def open_sealed(dht_key: str | bytes, subkey: Any, value: Any, expiration: float | None, mac_key: bytes | None) -> Any:
    """Verify a sealed value read under ``dht_key`` / ``subkey`` and return its decoded body.

    ``expiration`` is the DHT's expiration of the value (None: not checked).

    Raises:
        RecordError: wrong shape or sizes, bad MAC, key not matching the subkey, bad signature, a
            lifetime other than the signed one, or a body that is not plain msgpack.
    """
    if not isinstance(value, dict) or set(value) != set(_FIELDS) or not isinstance(subkey, str):
        raise RecordError("not a sealed peerd record")
    for name, typ in _FIELDS.items():
        if not isinstance(value[name], typ) or isinstance(value[name], bool):
            raise RecordError(f"sealed field {name} has wrong type")
    blob, exp, pk, sig, mac = value["body"], value["exp"], value["pk"], value["sig"], value["mac"]
    if value["s"] != SEAL_VERSION or len(blob) > MAX_BODY_BYTES or len(pk) > MAX_KEY_BYTES or len(sig) > MAX_KEY_BYTES:
        raise RecordError("sealed record has wrong version or is oversized")
    if len(subkey) > 128 or not math.isfinite(exp):
        raise RecordError("sealed record subkey or expiration out of range")
    msg = _message(dht_key, subkey, exp, blob)
    if mac_key is not None and not hmac.compare_digest(mac, hmac.new(mac_key, msg + sig, hashlib.sha256).digest()):
        raise RecordError("record not authenticated by the swarm secret")
    if peer_id_of(pk) != subkey:
        raise RecordError("record key does not belong to its subkey's peer")
    try:
        key = serialization.load_der_public_key(pk)
    except (ValueError, TypeError) as exc:
        raise RecordError("record public key unreadable") from exc
    # Bound the verification cost: only the key sizes and the exponent libp2p peers actually use. A
    # forged key with a 2,000-bit exponent (anyone can write one: the modulus need not be factorable)
    # turns each check into a full modular exponentiation, ~1-30 ms, which an outsider could
    # make every storing node pay per record; e=65537 keeps it at tens of microseconds.
    if not isinstance(key, rsa.RSAPublicKey) or not 2048 <= key.key_size <= 4096:
        raise RecordError("record public key is not RSA 2048-4096")
    if key.public_numbers().e != RSA_EXPONENT:
        raise RecordError(f"record public key exponent is not {RSA_EXPONENT}")
    if len(sig) != (key.key_size + 7) // 8:
        raise RecordError("record signature length does not match its key")
    try:
        key.verify(sig, msg, _PSS, hashes.SHA256())
    except InvalidSignature:
        raise RecordError("record signature invalid") from None
    if expiration is not None and abs(expiration - exp) > 1e-3:
        raise RecordError("record lifetime differs from the signed one (replayed?)")
    try:
        return msgpack.unpackb(blob, raw=False, strict_map_key=True)  # blob size bounded above
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise RecordError("record body is not plain msgpack") from exc


def run_tag(run_id: str) -> str:
    """What the runs directory publishes about a run: a short hash, not its name."""
    return hashlib.blake2b(run_id.encode(), digest_size=8).hexdigest()


_RUNS_ID = key_id(RUNS_KEY)


class SealValidator(RecordValidatorBase):
    """hivemind record validator: DHT nodes store and return only properly sealed peerd records.

    Checking at store time matters: a storing node keeps, per subkey, the value with the latest
    expiration, so a forged record that was merely ignored by readers could still displace the
    honest one. Every peerd node refuses to store it instead (counted through ``on_invalid``).
    """

    def __init__(self, mac_key: bytes | None, on_invalid: Callable[[], None] = lambda: None) -> None:
        """``mac_key``: the swarm's record key (None: open swarm, signatures only)."""
        self.mac_key = mac_key
        self.on_invalid = on_invalid

    def validate(self, record: DHTRecord) -> bool:
        """Whether ``record`` is a sealed value, signed by its subkey's peer, for its key and lifetime."""
        try:
            subkey = MSGPackSerializer.loads(record.subkey)
            value = MSGPackSerializer.loads(record.value)
            mac_key = None if record.key == _RUNS_ID else self.mac_key
            open_sealed(record.key, subkey, value, record.expiration_time, mac_key)
        except Exception:  # noqa: BLE001 - any failure to parse is an invalid record, never a crash
            self.on_invalid()
            return False
        return True
