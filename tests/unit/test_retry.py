"""Which failed calls a push repeats (peerd/net/wire.py ``may_retry``, used by peerd/mixing/pushes.py)."""

from __future__ import annotations

import grpc

from peerd.net.wire import ChannelClosed, call_status, may_retry
from tests.sim.net import SimRpcError


def test_transient_failures_are_retried_and_refusals_are_not() -> None:
    for status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                   grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED):
        assert may_retry(SimRpcError("busy", status)), status
    # The receiver names the call itself: another plan, a duplicate, a bad header, no permission.
    for status in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
                   grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED):
        assert not may_retry(SimRpcError("refused", status)), status
    assert call_status(SimRpcError("x", grpc.StatusCode.ABORTED)) is grpc.StatusCode.ABORTED


def test_a_closed_channel_ends_the_tries_and_a_bare_broken_connection_does_not() -> None:
    assert not may_retry(ChannelClosed("the view forgot the peer"))
    assert may_retry(ConnectionResetError())  # no status: the connection broke
    assert not may_retry(ValueError("a bug of ours"))
    assert call_status(ValueError()) is None


def test_the_real_transports_errors_are_read_the_same_way() -> None:
    def rpc_error(status: grpc.StatusCode) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(status, grpc.aio.Metadata(), grpc.aio.Metadata(), "detail")

    assert may_retry(rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert not may_retry(rpc_error(grpc.StatusCode.FAILED_PRECONDITION))
    assert call_status(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)) is grpc.StatusCode.DEADLINE_EXCEEDED
