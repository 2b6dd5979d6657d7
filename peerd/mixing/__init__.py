"""Mixing: one :class:`~peerd.mixing.base.Mixer` per mode (Streaming DiLoCo, gossip) behind one interface."""
