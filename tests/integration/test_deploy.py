"""docker/: compose files parse, the chaos loop behaves, the dashboard queries real metrics.

No Docker engine is needed: compose files go through the real ``docker-compose`` parser
(``config``), the chaos shell loop runs against a stub ``docker`` CLI, and the metric checks
run against real ``peerd join`` daemons on 127.0.0.1 scraped by a real Prometheus server.
System tools come from Debian packages (``.ci/run`` installs them): ``docker-compose`` and
``prometheus`` (``/usr/bin/prometheus`` and ``promtool``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Peer, Swarm, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BASE = DOCKER / "compose.yml"
OVERLAYS = {"gpu": DOCKER / "compose.gpu.yml", "chaos": DOCKER / "compose.chaos.yml"}
DASHBOARD = DOCKER / "grafana" / "dashboards" / "peerd" / "swarm.json"
DATASOURCE = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"


def tool(name: str, package: str) -> str:
    """Path of a system tool; fails (never skips) with the Debian package to install."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package `{package}` "
                    f"(apt-get install -y {package}; .ci/run does this)")
    return path


# ---------------------------------------------------------------------------------------------
# Compose files


def compose_config(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``docker-compose -f ... config``: exit 0, and the resolved model as a dict."""
    cmd = [tool("docker-compose", "docker-compose")]
    for f in files:
        cmd += ["-f", str(f)]
    # The real parser interpolates ${VARS} from the environment: start from a clean one.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PEERD_", "CHAOS_", "COMPOSE_"))}
    res = subprocess.run([*cmd, "config"], capture_output=True, text=True, timeout=60,
                         env={**clean, **(env or {})}, cwd=ROOT)
    assert res.returncode == 0, f"{' '.join(cmd)} config failed:\n{res.stderr}"
    return yaml.safe_load(res.stdout)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overlays", [(), ("gpu",), ("chaos",), ("gpu", "chaos")], ids=lambda o: "+".join(o) or "base")
def test_compose_files_parse(overlays: tuple[str, ...]) -> None:
    model = compose_config(BASE, *(OVERLAYS[o] for o in overlays))
    services = model["services"]
    assert {"bootstrap", "worker", "prometheus", "grafana"} <= set(services)
    boot, worker = services["bootstrap"], services["worker"]
    probe = ["CMD", "peerd", "status", "--probe"]
    for name, svc in (("bootstrap", boot), ("worker", worker)):
        assert svc["healthcheck"]["test"] == probe, name
        assert svc["stop_signal"] == "SIGTERM" and svc["stop_grace_period"] == "30s", name
        assert "container_name" not in svc and "ports" not in svc, f"{name}: scaled/peer services publish nothing"
        assert svc["build"]["context"] == str(ROOT), name
        assert svc["environment"]["PEERD_RUN_ID"] == "compose", name
    assert boot["build"]["dockerfile"] == "docker/Dockerfile"
    assert "--ready-file" in boot["command"] and "/run/peerd/bootstrap.json" in boot["command"]
    assert worker["command"][:3] == ["join", "--bootstrap-file", "/run/peerd/bootstrap.json"]
    assert worker["depends_on"] == {"bootstrap": {"condition": "service_healthy"}}
    assert worker["deploy"]["replicas"] == 4
    assert worker["volumes"] == ["peerd-run:/run/peerd:ro"]
    assert any(v.endswith(":/etc/grafana/provisioning:ro") for v in services["grafana"]["volumes"])
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert any(v.endswith("/docker/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro")
               for v in services["prometheus"]["volumes"])
    gpu = "gpu" in overlays
    assert worker["build"]["dockerfile"] == ("docker/Dockerfile.gpu" if gpu else "docker/Dockerfile")
    if gpu:
        assert worker["environment"]["PEERD_DEVICE"] == "cuda"
        assert worker["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        assert (DOCKER / "Dockerfile.gpu").is_file()
    if "chaos" in overlays:
        assert worker["restart"] == "unless-stopped"
        chaos = services["chaos"]
        assert "/var/run/docker.sock:/var/run/docker.sock:rw" in chaos["volumes"]
        assert boot.get("restart", "no") == "no", "chaos never targets (nor restarts) the bootstrap"
    else:
        assert "chaos" not in services and "restart" not in worker


@pytest.mark.timeout(60)
def test_compose_worker_count_comes_from_env() -> None:
    model = compose_config(BASE, env={"PEERD_WORKERS": "7", "PEERD_RUN_ID": "exp1"})
    assert model["services"]["worker"]["deploy"]["replicas"] == 7
    assert model["services"]["worker"]["environment"]["PEERD_RUN_ID"] == "exp1"


def test_dockerfiles_stay_small_non_root_and_match_the_torch_pin() -> None:
    # Static: no engine here to build them. The pin must be the one pyproject.toml requires.
    pin = re.search(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    for name, cpu in (("Dockerfile", True), ("Dockerfile.gpu", False)):
        text = (DOCKER / name).read_text()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert lines[0].startswith("FROM python:3.11-slim"), name
        torch_line = next(ln for ln in lines if "pip install torch" in ln)
        assert pin in torch_line.split(), (name, torch_line)
        assert ("--index-url https://download.pytorch.org/whl/cpu" in torch_line) == cpu, (name, torch_line)
        assert "USER peerd" in lines and lines.index("USER peerd") > lines.index(torch_line), name
        assert 'ENTRYPOINT ["peerd"]' in lines and "/run/peerd" in text and "PEERD_METRICS__HOST=0.0.0.0" in text
        for ln in lines:
            if ln.startswith("COPY "):
                for src in ln.split()[1:-1]:
                    assert (ROOT / src).exists(), (name, src)
    assert ".venv" in (ROOT / ".dockerignore").read_text().split()


STUB_DOCKER = r"""#!/bin/sh
# Stub docker CLI: logs every call, answers the few queries the chaos loop makes.
echo "$*" >> "$STUB_LOG"
case "$1" in
  inspect)
    case "$*" in
      *com.docker.compose.project*) echo demo ;;
      *.Name*) echo "/demo-worker-$4" ;;
    esac ;;
  ps) [ -n "$STUB_WORKERS" ] && printf '%s\n' $STUB_WORKERS ;;
  exec) ;;
  *) echo "unexpected docker call: $*" >&2; exit 1 ;;
esac
"""


def run_chaos(tmp_path: Path, workers: str, rounds: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    model = compose_config(BASE, OVERLAYS["chaos"])
    chaos = model["services"]["chaos"]
    assert chaos["entrypoint"] == ["/bin/sh", "-c"]
    script = chaos["command"][0].replace("$$", "$")  # compose's escape for a literal $
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "docker").write_text(STUB_DOCKER)
    (bindir / "docker").chmod(0o755)
    log = tmp_path / f"docker-{rounds}.log"
    log.touch()
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOSTNAME": "c0ffee", "STUB_LOG": str(log),
           "STUB_WORKERS": workers, "CHAOS_INTERVAL_S": "0", "CHAOS_ROUNDS": str(rounds)}
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, env=env)
    return res, log.read_text().splitlines()


@pytest.mark.timeout(120)
def test_chaos_loop_kills_only_healthy_workers_of_its_project_and_ends(tmp_path: Path) -> None:
    res, calls = run_chaos(tmp_path, "w1 w2 w3", rounds=5)
    assert res.returncode == 0, res.stderr
    assert "done after 5 rounds" in res.stdout
    assert calls[0].startswith("inspect") and calls[0].endswith("c0ffee")  # its own project label
    ps = [c for c in calls if c.startswith("ps")]
    assert len(ps) == 5
    for call in ps:
        for flt in ("label=com.docker.compose.project=demo", "label=com.docker.compose.service=worker",
                    "status=running", "health=healthy"):
            assert flt in call.split(), (flt, call)
    kills = [c.split() for c in calls if c.startswith("exec")]
    assert len(kills) == 5
    for k in kills:
        assert k[1] in {"w1", "w2", "w3"} and k[2:] == ["sh", "-c", "kill", "-KILL", "-1"]
    # Nothing to kill: every round is skipped, and the loop still ends.
    res, calls = run_chaos(tmp_path, "", rounds=3)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("no healthy worker") == 3 and not [c for c in calls if c.startswith("exec")]


# ---------------------------------------------------------------------------------------------
# Dashboard and metrics of real daemons

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
             "unless", "inf", "nan", "start", "end"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not functions, keywords, labels or numbers)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range / subquery windows
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.:$])[A-Za-z_:][\w:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue  # a function call or a keyword
        names.add(m.group(0))
    return names


def test_promql_metric_name_extraction() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.95, sum by (instance, le) (rate(a_bucket{instance=~"$x",k="by(z)"}[1m])))'
    ) == {"a_bucket"}
    assert promql_metric_names("max(b) - min(c offset 5m) / on(x) group_left(y) d > bool 1e3") == {"b", "c", "d"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and the templating queries."""
    doc = dashboard()
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q)
            exprs.append(m.group(1) if m else q)
    return exprs


def test_dashboard_is_provisionable() -> None:
    doc = dashboard()
    uid = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]["uid"]
    assert uid == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] == "peerd-swarm"
    for p in doc["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == uid and t["expr"] for t in p["targets"]), p["title"]
    titles = " | ".join(p["title"] for p in doc["panels"]).lower()
    for want in ("eval loss", "train loss", "steps/s", "fragment bytes", "rounds by outcome", "live peers",
                 "resyncs", "sync duration", "hash mismatches", "worker utilization", "revision"):
        assert want in titles, want


def exposed_names(text: str) -> tuple[set[str], set[str]]:
    """(names a query may select, names with at least one sample) of an exposition."""
    declared, sampled = set(), set()
    for fam in text_string_to_metric_families(text):
        declared.add(fam.name)
        if fam.type == "counter":
            declared.add(fam.name + "_total")
        elif fam.type in ("histogram", "gaugehistogram"):
            declared.update(fam.name + s for s in ("_bucket", "_sum", "_count"))
        elif fam.type == "summary":
            declared.update(fam.name + s for s in ("_sum", "_count"))
        sampled.update(s.name for s in fam.samples)
    return declared | sampled, sampled


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two daemons that committed a round, then a late joiner that resynced from them."""
    swarm = Swarm(tmp_path_factory.mktemp("deploy"))
    t0 = time.monotonic()
    try:
        a = swarm.start(["train.max_steps=0"])
        a.wait_ready()
        b = swarm.start(["train.max_steps=0"])
        b.wait_ready()
        wait_for(lambda: any(p.metric_value("peerd_rounds_total", 'outcome="committed"') >= 1 for p in (a, b)),
                 120, "a committed round")
        c = swarm.start(["train.max_steps=0"])  # behind the swarm's revision: must resync before training
        c.wait_ready()
        wait_for(lambda: c.metric_value("peerd_resyncs_total", 'outcome="ok"') >= 1, 60, "the joiner's resync")
        texts = {p.index: p.metrics() for p in swarm.peers}
        yield {"swarm": swarm, "peers": swarm.peers, "texts": texts, "setup_s": time.monotonic() - t0}
    finally:
        swarm.stop_all()


@pytest.mark.timeout(300)
def test_dashboard_metrics_exist_in_real_exposition(live: dict[str, Any]) -> None:
    names: set[str] = set()
    sampled: set[str] = set()
    for text in live["texts"].values():
        n, s = exposed_names(text)
        names |= n
        sampled |= s
    referenced = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    assert referenced, "no metric names found in the dashboard"
    missing = sorted(referenced - names)
    assert not missing, f"dashboard queries metrics no daemon exports: {missing}"
    # Every family the dashboard shows has produced data in this short run, except streams refused
    # by reason (none are refused in a healthy swarm; tests/integration/test_bad_streams.py covers it).
    assert referenced - sampled <= {"peerd_rejected_streams_total"}, sorted(referenced - sampled)


@pytest.mark.timeout(120)
def test_promtool_check_metrics_is_clean(live: dict[str, Any]) -> None:
    promtool = tool("promtool", "prometheus")
    for i, text in live["texts"].items():
        res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), \
            f"promtool check metrics on peer {i}:\n{res.stdout}{res.stderr}"


def test_prometheus_config_is_valid() -> None:
    config = DOCKER / "prometheus" / "prometheus.yml"
    res = subprocess.run([tool("promtool", "prometheus"), "check", "config", str(config)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prom_query(port: int, expr: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 400/422: a bad expression, with Prometheus' error in the body
        return json.loads(exc.read())


# Panels the dashboard must fill with data for a healthy swarm (a name fragment of each query).
MUST_HAVE_DATA = ["peerd_eval_loss", "peerd_train_loss", "rate(peerd_train_steps_total", "peerd_fragment_bytes_total",
                  "rate(peerd_rounds_total", "peerd_peers_live", "peerd_revision", "peerd_resyncs_total",
                  "peerd_sync_duration_seconds", "peerd_hash_mismatches_total", "peerd_worker_utilization_ratio"]


@pytest.mark.timeout(180)
def test_real_prometheus_scrapes_daemons_and_runs_every_dashboard_query(live: dict[str, Any], tmp_path: Path) -> None:
    binary = tool("prometheus", "prometheus")
    peers: list[Peer] = live["peers"]
    targets = [str(p.info["metrics"]) for p in peers]
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "peerd", "static_configs": [{"targets": targets}]}],
    }))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def steps_on_every_target() -> bool:
            assert proc.poll() is None, f"prometheus exited:\n{(tmp_path / 'prometheus.log').read_text()[-3000:]}"
            try:
                body = prom_query(port, "peerd_train_steps_total")
            except OSError:
                return False  # not listening yet
            values = {r["metric"]["instance"]: float(r["value"][1]) for r in body["data"]["result"]}
            return set(values) == set(targets) and all(v > 0 for v in values.values())

        wait_for(steps_on_every_target, 60, "peerd_train_steps_total > 0 from every daemon", interval_s=0.5)

        exprs = [e.replace("$instance", ".*") for e in dashboard_exprs()]
        for e in exprs:
            body = prom_query(port, e)
            assert body["status"] == "success", f"Prometheus rejects a dashboard query: {e}\n{body.get('error')}"

        must = [e for e in exprs if any(k in e for k in MUST_HAVE_DATA)]
        assert len(must) >= len(MUST_HAVE_DATA)

        def empty_panels() -> list[str]:
            return [e for e in must if not prom_query(port, e)["data"]["result"]]

        # rate() over [1m] needs two scrapes of a series: give it a few seconds, bounded.
        deadline = time.monotonic() + 30
        while (empty := empty_panels()) and time.monotonic() < deadline:
            time.sleep(1)
        assert not empty, f"dashboard queries with no data from a live swarm: {empty}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
