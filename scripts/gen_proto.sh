#!/usr/bin/env bash
# Regenerates the committed protobuf/gRPC stubs from proto/. tests/unit/test_proto_stubs.py
# fails when the committed files differ from what this script produces.
set -euo pipefail
out="${1:-.}"
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I proto \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/peerd/proto/v1/peer.proto
