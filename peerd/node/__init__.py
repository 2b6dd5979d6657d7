"""The peer: composed services (swarm view, round driver, one mixer, checkpointer) and the daemon."""
