"""One command for every benchmark: ``python -m bench [--quick] [--only a,b]``.

``--quick`` takes about 10 minutes on an idle 2-core machine, the full run about an hour. Results
go to ``bench/results/latest.json`` (with ``--only``, the other sections of the existing file are
kept), plots next to it, and the generated table of ``BENCHMARKS.md`` is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
SECTIONS = ("codec", "transport", "convergence", "utilization", "scaling", "rounds", "frontier", "race", "defaults",
            "gossip", "paced")
PLANS: dict[str, dict[str, Any]] = {
    "quick": {"codec_repeats": 3, "transport_repeats": 3, "conv_peers": 2, "conv_steps": 200,
              "util_steps": 300, "util_repeats": 1, "scale_sizes": (2, 4, 8), "scale_steps": 300,
              "wan_steps": 300, "wan_repeats": 1, "loopback_sizes": (4, 8), "loopback_s": 30,
              "frontier_steps": 200, "frontier_methods": ("solo_shard0", "ddp", "int8_P2_H20", "sparse3_r3_H20"),
              "race_s": 60, "defaults_steps": 400, "defaults_variants": ("default", "clock_plain"),
              "gossip_peers": 4, "gossip_steps": 200},
    "full": {"codec_repeats": 7, "transport_repeats": 5, "conv_peers": 4, "conv_steps": 1000,
             "util_steps": 800, "util_repeats": 2, "scale_sizes": (2, 4, 8, 16), "scale_steps": 1000,
             "wan_steps": 1000, "wan_repeats": 3, "loopback_sizes": (4, 8, 16), "loopback_s": 120,
             "frontier_steps": 2000, "frontier_methods": "core", "race_s": 240, "defaults_steps": 2000,
             "defaults_variants": ("default", "paced_plain", "clock_plain", "clock_momentum"),
             "gossip_peers": 8, "gossip_steps": 1000},
}


def machine() -> str:
    """``nproc`` and CPU model, for the report."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, write results and the report."""
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="minutes instead of an hour")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--workdir", default="/tmp/peerd-bench", help="per-run logs and summaries")
    a = ap.parse_args(argv)
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {SECTIONS}")
    plan = PLANS["quick" if a.quick else "full"]
    base = ".venv/bin/python -m bench" + (" --quick" if a.quick else "")
    cmd = lambda section: f"{base} --only {section}"  # noqa: E731 - tiny local helper
    work = Path(a.workdir)
    from bench import netns

    if netns.available() is None:
        for stale in netns.leftover():  # only ours (pb*), left by a benchmark that was SIGKILLed
            netns._ip("netns", "del", stale, check=False)
    r: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() and set(only) != set(SECTIONS) else {}
    t0 = time.monotonic()
    sections = r.get("meta", {}).get("sections", {})  # when and under what load each section last ran
    r["meta"] = {"command": " ".join([base.replace(" --quick", "")] + [shlex.quote(x) for x in sys.argv[1:]]),
                 "mode": "quick" if a.quick else "full", "machine": machine(),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()), "plan": plan, "sections": sections}

    def stamp(section: str, started: float) -> None:
        sections[section] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                             "minutes": round((time.monotonic() - started) / 60, 1),
                             "load_1m_after": round(os.getloadavg()[0], 1), "mode": r["meta"]["mode"]}
    if "codec" in only:
        from bench import codecs

        print("bench: codecs ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        r["codec"] = {**codecs.run(repeats=plan["codec_repeats"]), "command": cmd("codec")}
        stamp("codec", started)
    if "transport" in only:
        from bench import transport

        print("bench: transport ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        r["transport"] = {**transport.run(repeats=plan["transport_repeats"]), "command": cmd("transport")}
        stamp("transport", started)
    if "convergence" in only:
        from bench import convergence

        started = time.monotonic()
        r["convergence"] = convergence.run(plan["conv_peers"], plan["conv_steps"], work / "convergence",
                                           bench_cmd=cmd("convergence"))
        stamp("convergence", started)
    if "utilization" in only:
        from bench import utilization

        started = time.monotonic()
        r["utilization"] = {**utilization.run(plan["util_steps"], work / "utilization",
                                              ("loopback", "tbf_100mbit", "tbf_20mbit"), plan["util_repeats"]),
                            "command": cmd("utilization")}
        stamp("utilization", started)
    if "scaling" in only:
        from bench import scaling

        started = time.monotonic()
        r["scaling"] = [{**s, "bench_command": cmd("scaling")}
                        for s in scaling.run(plan["scale_sizes"], plan["scale_steps"], work / "scaling")]
        stamp("scaling", started)
    if "rounds" in only:
        from bench import rounds

        started = time.monotonic()
        r["rounds"] = rounds.run(plan["wan_steps"], plan["loopback_sizes"], plan["loopback_s"], work / "rounds",
                                 bench_cmd=cmd("rounds"), wan_repeats=plan["wan_repeats"])
        stamp("rounds", started)
    if "frontier" in only:
        from bench import frontier

        print("bench: frontier ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        names = list(frontier.CORE) if plan["frontier_methods"] == "core" else list(plan["frontier_methods"])
        # Its own file per mode: a quick run must not resume into (or overwrite) the full one.
        out = RESULTS.parent / ("frontier.json" if plan["frontier_methods"] == "core" else "frontier_quick.json")
        out.unlink(missing_ok=True)
        r["frontier"] = {**frontier.measure(plan["frontier_steps"], 4, names, out, log=False),
                         "command": cmd("frontier")}
        stamp("frontier", started)
    if "race" in only:
        from bench import wan_race
        from bench.wan import available

        print("bench: race (equal wall time over an emulated link) ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        why = available()
        if why:
            r["race"] = {"methods": {m: {"error": f"WAN emulator unavailable: {why}"} for m in wan_race.METHODS}}
        else:
            r["race"] = {"profile": wan_race.PROFILES["continent"].as_dict(), "peers": 4, "seconds": plan["race_s"],
                         "methods": wan_race.run("continent", 4, plan["race_s"], plan["race_s"] / 12, 300,
                                                 list(wan_race.METHODS), [], work / "race", 1)}
        r["race"]["command"] = cmd("race")
        stamp("race", started)
    if "defaults" in only:
        from bench import defaults_real

        started = time.monotonic()
        r["defaults"] = defaults_real.run(plan["defaults_steps"], list(plan["defaults_variants"]), work / "defaults")
        r["defaults"]["command"] = cmd("defaults")
        stamp("defaults", started)
    if "gossip" in only:
        from bench import gossip_real

        started = time.monotonic()
        r["gossip"] = gossip_real.run(plan["gossip_peers"], plan["gossip_steps"], [], work / "gossip")
        r["gossip"]["command"] = cmd("gossip")
        stamp("gossip", started)
    if "paced" in only:
        from bench import paced_real

        started = time.monotonic()
        r["paced"] = {"command": cmd("paced"), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      "cases": {"paced": paced_real.run_case(200, 1500, 3.0, work / "paced")}}
        stamp("paced", started)
    r["meta"]["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    r["meta"]["duration_s"] = round(time.monotonic() - t0, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(r, indent=2))
    from bench import report

    r = report.regenerate(RESULTS, ROOT / "BENCHMARKS.md")
    for t in r["targets"]:
        print(f"{t['verdict']:>12}  {t['target']}: {t['margin']}")
    print(f"wrote {RESULTS.relative_to(ROOT)} and BENCHMARKS.md in {r['meta']['duration_s']} s")
    return 0
