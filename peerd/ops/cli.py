"""Command line: ``peerd join`` (one daemon) and ``peerd swarm`` (N local daemons).

Exit codes: 0 ok; 1 runtime error; 2 bad configuration or arguments; 3 network/bind failure.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from peerd.core.config import ConfigError, PeerdConfig, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="peerd: peer-to-peer training daemon.")

ConfigOpt = Annotated[str | None, typer.Option("--config", metavar="FILE", help="YAML config file.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE",
                                                  help="Override a config key: a.b=value (repeatable).")]
SummaryOpt = Annotated[str | None, typer.Option("--summary", metavar="FILE", help="Write the run summary JSON here.")]


def _load(config: str | None, overrides: list[str] | None) -> PeerdConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        typer.echo(f"peerd: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def join(
    bootstrap: Annotated[
        list[str] | None, typer.Option("--bootstrap", metavar="MULTIADDR", help="DHT multiaddr of a peer (repeatable).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    summary: SummaryOpt = None,
    ready_file: Annotated[
        str | None, typer.Option("--ready-file", metavar="FILE",
                                 help="Write peer id and addresses as JSON here once joined.")
    ] = None,
    exit_when_done: Annotated[
        bool,
        typer.Option("--exit-when-done", help="With train.max_steps: leave after the swarm's common final rounds."),
    ] = False,
    log_format: Annotated[str | None, typer.Option("--log-format", metavar="FORMAT",
                                                   help="auto, console or json.")] = None,
    wait_for_peers: Annotated[
        int, typer.Option("--wait-for-peers", min=1, metavar="N",
                          help="Start training once this many peers are up (bounded).")
    ] = 1,
    bootstrap_file: Annotated[
        str | None,
        typer.Option("--bootstrap-file", metavar="FILE",
                     help="Bootstrap from another daemon's ready file (waits up to 120 s for it)."),
    ] = None,
) -> None:
    """Run one daemon; without --bootstrap it starts a new swarm."""
    overrides = list(set_ or [])
    if log_format:
        overrides.append(f"log.format={log_format}")
    # The config first: a typo is reported at once, before anything heavy (torch, hivemind) loads.
    cfg = _load(config, overrides)
    bootstrap = list(bootstrap or [])
    if bootstrap_file:
        bootstrap += _maddrs_from_ready_file(bootstrap_file, timeout_s=120)
    if bootstrap:
        _check_bootstrap(bootstrap)
    from peerd.core.log import setup_logging
    from peerd.ops import quiet

    setup_logging(cfg.log.level, cfg.log.format)
    import uvloop

    from peerd.node.daemon import Daemon

    daemon_ref: list[Daemon] = []

    def stopping() -> bool:
        return bool(daemon_ref) and daemon_ref[0].stopping()

    quiet.install(stopping)

    async def main() -> int:
        daemon = Daemon(cfg, bootstrap, ready_file, summary, exit_when_done, wait_for_peers)
        daemon_ref.append(daemon)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(quiet.exception_handler(stopping))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.request_stop, sig.name.lower())
        # Diagnostics for a peer that seems stuck: SIGUSR1 prints every thread's stack (works
        # even when the event loop itself is blocked), SIGUSR2 every asyncio task's stack.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)
        code = await daemon.run()
        # "stopped" is logged and the summary written: nothing is left but the interpreter's
        # teardown, which waits on hivemind's threads and tasks (silent seconds, stray tracebacks).
        quiet.exit_now(code)
        return code

    code = uvloop.run(main())
    raise typer.Exit(code)


@app.command()
def swarm(
    peers: Annotated[int, typer.Option("--peers", min=1, max=64, metavar="N", help="Number of local daemons.")] = 4,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    # 1000, not fewer: at 300 steps the swarm's few rounds landed it at one peer's loss (no gain to
    # show); at 1000 it ends clearly below it, in about 85 s on a 2-core box (README, Quick start).
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, metavar="N", help="Inner steps per peer.")] = 1000,
    summary: SummaryOpt = None,
    workdir: Annotated[str | None, typer.Option("--workdir", metavar="DIR",
                                                help="Keep per-peer logs and files here.")] = None,
) -> None:
    """Train the built-in task with N daemons on 127.0.0.1 and print a result table."""
    _load(config, list(set_ or []))  # fail fast on a bad config, before any process starts
    from peerd.ops.swarm import disagreement, print_table, run_swarm

    result = run_swarm(peers, config, list(set_ or []), max_steps, summary, workdir)
    print_table(result)
    failed = [p for p in result["peers"] if p.get("exit") != "done"]
    if failed:
        typer.echo(f"peerd swarm: {len(failed)} of {len(result['peers'])} peers did not finish (see exit column)",
                   err=True)
    differ = disagreement(result)
    if differ:
        typer.echo(f"peerd swarm: {differ}", err=True)
    raise typer.Exit(1 if failed or differ else 0)


def _dump_tasks() -> None:
    tasks = asyncio.all_tasks()
    print(f"--- {len(tasks)} asyncio tasks ---", file=sys.stderr)
    for task in tasks:
        print(f"task {task.get_name()}:", file=sys.stderr)
        task.print_stack(limit=20, file=sys.stderr)
    sys.stderr.flush()


def _check_bootstrap(maddrs: list[str]) -> None:
    """Exit 2 with the fix on a malformed --bootstrap address, before any process or port is opened."""
    from hivemind.utils.multiaddr import Multiaddr

    for m in maddrs:
        try:
            ok = "p2p" in [p.name for p in Multiaddr(m).protocols()]
        except Exception:  # noqa: BLE001 - the multiaddr parser raises several unrelated types
            ok = False
        if not ok:
            typer.echo(f"peerd: --bootstrap {m!r}: not a peer multiaddr; expected /ip4/HOST/tcp/PORT/p2p/PEER_ID "
                       "as printed by a running peer's join hint", err=True)
            raise typer.Exit(2)


def _maddrs_from_ready_file(path: str, timeout_s: float) -> list[str]:
    import json
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            maddrs = json.loads(Path(path).read_text())["dht_maddrs"]
            if isinstance(maddrs, list) and maddrs and all(isinstance(m, str) for m in maddrs):
                return maddrs
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            typer.echo(f"peerd: --bootstrap-file {path}: no ready file with dht_maddrs after {timeout_s:.0f}s",
                       err=True)
            raise typer.Exit(3)
        time.sleep(0.5)


@app.command()
def status(
    admin: Annotated[str | None, typer.Option("--admin", metavar="HOST:PORT",
                                              help="host:port of a daemon's admin endpoint.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    probe: Annotated[
        bool, typer.Option("--probe", help="Health check: exit 0 if every daemon is healthy, else 1.")
    ] = False,
) -> None:
    """Show the local daemon(s): identity, swarm size, step, loss, last round, rates, revision."""
    from peerd.ops.status import fetch_statuses, render

    statuses = fetch_statuses(admin)
    healthy = bool(statuses) and all(s.get("healthy") for s in statuses)
    if probe:
        raise typer.Exit(0 if healthy else 1)
    if as_json:
        typer.echo(json.dumps(statuses, indent=2))
    else:
        render(statuses)
    unreachable = [s["admin"] for s in statuses if s.get("health") == "unreachable"]
    for addr in unreachable:
        typer.echo(f"peerd: no peerd daemon answers at {addr} (is it running? its admin address is in its "
                   "ready file and `peerd status` without --admin finds local ones)", err=True)
    raise typer.Exit(1 if unreachable or not statuses else 0)


@app.command()
def report(
    summaries: Annotated[
        list[Path], typer.Argument(metavar="SUMMARY", help="Summary JSON files (from --summary).", exists=True,
                                   dir_okay=False)
    ],
    out: Annotated[Path, typer.Option("--out", metavar="DIR",
                                      help="Directory for the PNG plots.")] = Path("peerd-report"),
) -> None:
    """Plot eval loss vs steps and vs bytes sent, per peer, as PNG files."""
    from peerd.ops.report import load_summaries, write_report

    try:
        docs = load_summaries(summaries)
    except ValueError as exc:
        typer.echo(f"peerd: {exc}", err=True)
        raise typer.Exit(2) from None
    for path in write_report(docs, out):
        typer.echo(str(path))


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", metavar="DIR",
                                      help="Directory for simulate.json and PNGs.")] = Path("peerd-simulate"),
    peers: Annotated[str, typer.Option("--peers", metavar="SIZES",
                                       help="Comma-separated swarm sizes (2..1024).")] = "16,64,256,1024",
    quick: Annotated[bool, typer.Option("--quick", help="Fewer rounds (smoke test).")] = False,
) -> None:
    """Gossip-mode simulator: consensus decay, mass drift with churn, codec floors, A2CiD2 (no network)."""
    from peerd.ops.simreport import run_all, summary_lines, write

    try:
        sizes = [int(x) for x in peers.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or not all(2 <= n <= 1024 for n in sizes):
        typer.echo("peerd: --peers: expected comma-separated sizes in 2..1024", err=True)
        raise typer.Exit(2)
    res = run_all(sizes, quick)
    for line in summary_lines(res):
        typer.echo(line)
    for path in write(res, out):
        typer.echo(str(path))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="peerd")


if __name__ == "__main__":
    sys.exit(main())
