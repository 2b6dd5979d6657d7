"""Operator surface: the CLI, the local swarm launcher, status, reports and the offline simulator."""
