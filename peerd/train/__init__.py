"""Training: the torch worker thread and the task plug-ins it trains."""
