"""Training tasks: the task interface (base) and the built-in tinylm with its corpus."""
