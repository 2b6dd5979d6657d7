"""Network layer: gRPC transport and admission, the DHT membership and this peer's view of the swarm."""
