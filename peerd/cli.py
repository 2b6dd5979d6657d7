"""Command line: ``peerd join`` (one daemon) and ``peerd swarm`` (N local daemons).

Exit codes: 0 ok; 1 runtime error; 2 bad configuration or arguments; 3 network/bind failure.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Annotated

import typer

from peerd.config import ConfigError, PeerdConfig, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="peerd: peer-to-peer training daemon.")

ConfigOpt = Annotated[str | None, typer.Option("--config", help="YAML config file.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: a.b=value (repeatable).")]
SummaryOpt = Annotated[str | None, typer.Option("--summary", help="Write the run summary JSON here.")]


def _load(config: str | None, overrides: list[str] | None) -> PeerdConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        typer.echo(f"peerd: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def join(
    bootstrap: Annotated[list[str] | None, typer.Option("--bootstrap", help="DHT multiaddr of a peer (repeatable).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    summary: SummaryOpt = None,
    ready_file: Annotated[str | None, typer.Option("--ready-file", help="Write peer id and addresses as JSON here once joined.")] = None,
    exit_when_done: Annotated[bool, typer.Option("--exit-when-done", help="With train.max_steps: leave after the swarm's common final rounds.")] = False,
    log_format: Annotated[str | None, typer.Option("--log-format", help="auto, console or json.")] = None,
    wait_for_peers: Annotated[int, typer.Option("--wait-for-peers", min=1, help="Start training once this many peers are up (bounded).")] = 1,
) -> None:
    """Run one daemon; without --bootstrap it starts a new swarm."""
    overrides = list(set_ or [])
    if log_format:
        overrides.append(f"log.format={log_format}")
    cfg = _load(config, overrides)
    from peerd.log import setup_logging

    setup_logging(cfg.log.level, cfg.log.format)
    import uvloop

    from peerd.daemon import Daemon

    daemon_ref: list[Daemon] = []

    async def main() -> int:
        daemon = Daemon(cfg, list(bootstrap or []), ready_file, summary, exit_when_done, wait_for_peers)
        daemon_ref.append(daemon)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.request_stop, sig.name.lower())
        return await daemon.run()

    code = uvloop.run(main())
    raise typer.Exit(code)


@app.command()
def swarm(
    peers: Annotated[int, typer.Option("--peers", min=1, max=64, help="Number of local daemons.")] = 4,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="Inner steps per peer.")] = 300,
    summary: SummaryOpt = None,
    workdir: Annotated[str | None, typer.Option("--workdir", help="Keep per-peer logs and files here.")] = None,
) -> None:
    """Train the built-in task with N daemons on 127.0.0.1 and print a result table."""
    _load(config, list(set_ or []))  # fail fast on a bad config, before any process starts
    from peerd.swarm import print_table, run_swarm

    result = run_swarm(peers, config, list(set_ or []), max_steps, summary, workdir)
    print_table(result)
    failed = [p for p in result["peers"] if p.get("exit") != "done"]
    raise typer.Exit(1 if failed else 0)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="peerd")


if __name__ == "__main__":
    sys.exit(main())
