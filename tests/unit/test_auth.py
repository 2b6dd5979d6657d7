"""Credential logic (pure): HKDF keys, MACs, time window, replay cache, secret resolution."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.core.config import ConfigError, SecurityConfig, load_config
from peerd.net import auth

KEY = auth.derive_key("s" * 32, "run", "rpc")
METHOD = "/peerd.v1.Peer/PushShard"


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def verifier(clock: Clock, size: int = 1024) -> auth.Verifier:
    return auth.Verifier(KEY, window_s=30, cache_size=size, clock=clock)


def reason(v: auth.Verifier, md, method: str = METHOD) -> str:
    with pytest.raises(auth.CredentialError) as err:
        v.check(md, method)
    return err.value.reason


def test_keys_differ_by_secret_run_and_purpose() -> None:
    keys = {auth.derive_key(s, r, p) for s in ("a" * 16, "b" * 16) for r in ("r1", "r2") for p in ("rpc", "dht")}
    assert len(keys) == 8 and all(len(k) == 32 for k in keys)


def test_valid_credential_admits_once_and_names_the_peer() -> None:
    clock = Clock()
    v = verifier(clock)
    md = auth.credential(KEY, "peer-a", METHOD, now=clock.t)
    assert v.check(md, METHOD) == "peer-a"
    assert reason(v, md) == "replay"  # the same nonce again, still inside the window


def test_refusals_name_their_reason() -> None:
    clock = Clock()
    v = verifier(clock)
    assert reason(v, ()) == "missing"
    assert reason(v, auth.credential(KEY, "a", METHOD, now=clock.t)[:3]) == "missing"
    wrong = auth.derive_key("w" * 32, "run", "rpc")
    assert reason(v, auth.credential(wrong, "a", METHOD, now=clock.t)) == "bad_mac"
    other_run = auth.derive_key("s" * 32, "other-run", "rpc")
    assert reason(v, auth.credential(other_run, "a", METHOD, now=clock.t)) == "bad_mac"
    # Bound to the method: a credential for FetchState does not open PushShard.
    assert reason(v, auth.credential(KEY, "a", "/peerd.v1.Peer/FetchState", now=clock.t)) == "bad_mac"
    assert reason(v, auth.credential(KEY, "a", METHOD, now=clock.t - 31)) == "expired"
    assert reason(v, auth.credential(KEY, "a", METHOD, now=clock.t + 31)) == "expired"
    # Bound to the peer id: changing it breaks the MAC.
    md = dict(auth.credential(KEY, "a", METHOD, now=clock.t))
    md[auth.H_PEER] = "b"
    assert reason(v, md.items()) == "bad_mac"
    md = list(auth.credential(KEY, "a", METHOD, now=clock.t))
    assert reason(v, md + [md[0]]) == "malformed"  # duplicated entry
    md = dict(auth.credential(KEY, "a", METHOD, now=clock.t))
    md[auth.H_TIME] = "-5"
    assert reason(v, md.items()) == "malformed"


def test_replay_cache_caps_each_peer_id_and_drains_when_credentials_expire() -> None:
    clock = Clock()
    v = verifier(clock, size=1024)  # 1024 // 16 = 64 nonces per peer id
    for _ in range(64):
        v.check(auth.credential(KEY, "a", METHOD, now=clock.t), METHOD)
    assert reason(v, auth.credential(KEY, "a", METHOD, now=clock.t)) == "replay_quota"
    assert v.check(auth.credential(KEY, "b", METHOD, now=clock.t), METHOD) == "b"  # others unaffected
    clock.t += 61  # every remembered nonce is past its window: the cache drains
    v.check(auth.credential(KEY, "a", METHOD, now=clock.t), METHOD)
    assert len(v._seen) == 1


def test_a_member_flooding_under_many_ids_cannot_lock_honest_peers_out() -> None:
    # Before: 65,536 admitted calls within the window filled the cache and every later call,
    # honest or not, was refused (replay_cache_full) until the flood's nonces expired.
    clock = Clock()
    v = verifier(clock, size=1024)
    for i in range(100):  # 1,600 admitted calls under 100 claimed ids, all inside the window
        for _ in range(16):
            v.check(auth.credential(KEY, f"forged-{i}", METHOD, now=clock.t), METHOD)
    assert len(v._seen) == 1024 and v.evicted == 1600 - 1024
    md = auth.credential(KEY, "honest", METHOD, now=clock.t)
    assert v.check(md, METHOD) == "honest"
    assert reason(v, md) == "replay"  # the newest nonces are still remembered


@given(st.lists(st.tuples(st.sampled_from([auth.H_PEER, auth.H_TIME, auth.H_NONCE, auth.H_MAC, "x"]),
                          st.text(max_size=80) | st.binary(max_size=80)), max_size=8))
@settings(max_examples=300, deadline=None)
def test_garbage_metadata_is_refused_cleanly(md: list[tuple[str, object]]) -> None:
    v = verifier(Clock())
    with pytest.raises(auth.CredentialError):
        v.check(md, METHOD)


PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


@given(st.text(PRINTABLE, min_size=1, max_size=128), st.floats(-29, 29))
@settings(max_examples=100, deadline=None)
def test_any_printable_ascii_peer_id_within_the_window_is_admitted(peer: str, skew: float) -> None:
    # gRPC metadata values are printable ASCII on the wire, so nothing honest is refused.
    clock = Clock()
    assert verifier(clock).check(auth.credential(KEY, peer, METHOD, now=clock.t + skew), METHOD) == peer


def _with(field: str, value: str, clock: Clock) -> list[tuple[str, str]]:
    """A credential whose ``field`` is replaced by ``value``; the MAC is recomputed so only syntax can refuse it."""
    md = dict(auth.credential(KEY, "peer-a", METHOD, now=clock.t))
    md[field] = value
    md[auth.H_MAC] = auth._mac(KEY, md[auth.H_PEER], METHOD, md[auth.H_TIME], md[auth.H_NONCE])
    return list(md.items())


@pytest.mark.parametrize("t_ms", ["²", "１２３４５", "١٢٣", "𝟏𝟐𝟑", "+1000000000", " 1000000000", "1000000000\n",
                                  "1" * 16, "", "1e9", "0x10"])
def test_time_field_must_be_ascii_digits_of_bounded_length(t_ms: str) -> None:
    # "²" passed str.isdigit() and then crashed int() (UNKNOWN on the wire); fullwidth digits were admitted.
    clock = Clock()
    assert reason(verifier(clock), _with(auth.H_TIME, t_ms, clock)) == "malformed"


@given(st.sampled_from([auth.H_PEER, auth.H_TIME, auth.H_NONCE]), st.text(min_size=1, max_size=80).filter(
    lambda s: not s.isascii()))
@settings(max_examples=200, deadline=None)
def test_non_ascii_fields_are_malformed_never_a_crash(field: str, value: str) -> None:
    clock = Clock()
    assert reason(verifier(clock), _with(field, value, clock)) == "malformed"


@given(st.text(max_size=80))
@settings(max_examples=200, deadline=None)
def test_any_mac_text_is_refused_with_a_reason(mac: str) -> None:
    # hmac.compare_digest raises TypeError on non-ASCII str: the syntax check must come first.
    clock = Clock()
    md = dict(auth.credential(KEY, "peer-a", METHOD, now=clock.t))
    md[auth.H_MAC] = mac
    assert reason(verifier(clock), md.items()) in ("malformed", "bad_mac")


def test_secret_from_file_env_and_never_printed(tmp_path, monkeypatch) -> None:
    f = tmp_path / "secret"
    f.write_text("  0123456789abcdef0123  \n")
    assert auth.resolve_secret(SecurityConfig(secret_file=str(f))) == "0123456789abcdef0123"
    with pytest.raises(auth.AuthConfigError, match="cannot read.*openssl rand"):
        auth.resolve_secret(SecurityConfig(secret_file=str(tmp_path / "missing")))
    monkeypatch.setenv("PEERD_SECURITY__SECRET", "e" * 24)
    cfg = load_config(None, [])
    assert auth.resolve_secret(cfg.security) == "e" * 24
    assert "e" * 24 not in repr(cfg) and "e" * 24 not in str(cfg.model_dump())
    assert auth.resolve_secret(SecurityConfig()) is None


def test_security_config_rejects_inconsistent_settings() -> None:
    for bad in (["security.secret=short"], ["security.secret=" + "a" * 20, "security.secret_file=/x"],
                ["security.tls_cert=/c"], ["security.tls_ca=/ca"], ["security.nope=1"]):
        with pytest.raises(ConfigError, match="security"):
            load_config(None, bad)
