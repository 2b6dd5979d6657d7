"""Gossip mixing mode: pairwise, mass-conserving exchanges whose per-peer cost is O(1)."""
