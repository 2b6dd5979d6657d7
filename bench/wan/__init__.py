"""A WAN emulator for tests and benchmarks: namespaces joined by a userspace delay line.

The kernel of the benchmark machine has no ``netem``, so delay, jitter, rate and loss are
applied by one Python process forwarding IP packets between TUN devices, one per host
namespace (``bench.wan.delayline``). Processes inside see real round-trip times::

    with WanEmulator(n_hosts=4, profile="intercontinental", seed=1) as wan:
        proc = wan.popen(0, ["python", "-m", "peerd", "join", "--set", f"transport.host={wan.addr(0)}"])
"""

from bench.wan.netns import WanEmulator, available, clean_stale, namespaces
from bench.wan.profiles import PROFILES, Profile

__all__ = ["PROFILES", "Profile", "WanEmulator", "available", "clean_stale", "namespaces"]
