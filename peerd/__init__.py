"""peerd: a peer-to-peer training daemon (Streaming DiLoCo over a DHT and gRPC)."""

__version__ = "0.1.0"
