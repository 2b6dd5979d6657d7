"""Exit codes, the fatal-error type and run totals shared by the daemon's parts (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_NETWORK = 0, 1, 2, 3


class FatalError(RuntimeError):
    """Stops the daemon with an exit code and a one-line operator message."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        """Remember the exit code."""
        super().__init__(message)
        self.code = code


@dataclass
class Counters:
    """Run totals for the summary."""

    rounds_committed: int = 0
    rounds_aborted: int = 0
    rounds_held: int = 0  # work pacing: the plan said no fragment was due (no exchange)
    tx_bytes: int = 0
    rx_bytes: int = 0
    final_fragments: set[int] = field(default_factory=set)
    failure_at: float | None = None  # first failure since the last commit (monotonic)
    recoveries_s: list[float] = field(default_factory=list)
    syncs: list[dict[str, float]] = field(default_factory=list)
    # every round this peer looked at, by "outcome:reason" (what the rounds metric counts too)
    round_outcomes: dict[str, int] = field(default_factory=dict)
    # DHT operations by kind (membership's names: store = heartbeat, get = view read, get_plans, ...)
    dht_ops: dict[str, int] = field(default_factory=dict)
