"""compose/: the stack's files agree with the code.

No Docker engine runs here, so what can be checked without one is: the YAML
parses; every command a container runs is a real ``stockflow`` command (checked
against the click command tree and the settings) or a consistent ``python -m
bytewax.run`` cluster; every ``STOCKFLOW_*``/``FINNHUB_*`` name is one the code
reads; hosts, ports, topics, buckets and mounts line up; images are pinned; no
secret is written down; and the Grafana dashboard asks only for series that
the compose dataflow command really serves (scraped from that command, run
against a real Kafka-protocol broker and Postgres).
"""

# Fixtures are imported by name, so test parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.fixtures_kafka import KafkaBroker, kafka_broker  # noqa: F401
from tests.fixtures_postgres import PgServer, pg_server  # noqa: F401

COMPOSE = ROOT / "compose"
MAIN = COMPOSE / "docker-compose.yml"
CLUSTER = COMPOSE / "docker-compose.cluster.yml"
ENV_EXAMPLE = COMPOSE / ".env.example"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "stockflow.json"
STOCKFLOW_IMAGE = "stockflow:"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|PASSPHRASE")
# Services that run once and exit, or a client with no port to probe.
NO_HEALTHCHECK = {"producer"}
METRIC = re.compile(r"\b(?:stockflow|bytewax|process|python)_[a-z0-9_]+\b")


# --- reading the files the way compose does ----------------------------------------


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's interpolation: ``$$`` is a literal ``$``; ``${X:-d}``,
    ``${X-d}``, ``${X:?msg}``, ``${X:+r}`` and ``${X}`` take `values` (a
    required empty one gets a stand-in, as a user's .env would give it)."""

    def sub(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        name, op, arg = m[1], m[2], m[3]
        value = values.get(name, "")
        if op in (":-", "-") and not value:
            return arg
        if op in (":?", "?") and not value:
            return f"stand-in-{name.lower()}"
        if op in (":+", "+"):
            return arg if value else ""
        return value

    return _VARIABLE.sub(sub, text)


def variables(text: str) -> set[str]:
    return {m[1] for m in _VARIABLE.finditer(text) if m[0] != "$$"}


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), path
    return data


def merged() -> dict[str, dict[str, Any]]:
    """The cluster variant's services: the main file with the override on top
    (a service's keys are replaced, as compose does for these keys; volume
    lists are merged by their target)."""
    services = {k: dict(v) for k, v in load(MAIN)["services"].items()}
    for name, override in load(CLUSTER)["services"].items():
        base = services.setdefault(name, {})
        for key, value in override.items():
            if key == "volumes" and "volumes" in base:
                by_target = {_target(v): v for v in base["volumes"]}
                by_target.update({_target(v): v for v in value})
                base[key] = list(by_target.values())
            else:
                base[key] = value
    return services


def _target(volume: str) -> str:
    return interpolate(volume, env_example()).split(":")[1]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v), env_example()) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    return [interpolate(str(part), env_example()) for part in cmd]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """``{container path: source}`` of a service's volumes (interpolated)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = interpolate(volume, env_example()).split(":")[:2]
        out[target] = source
    return out


def stockflow_invocations(cmd: list[str]) -> list[list[str]]:
    """The argument lists of every ``stockflow`` a command runs, directly or
    from a ``sh -c`` script."""
    if cmd[:1] == ["stockflow"]:
        return [cmd[1:]]
    if cmd[:2] in (["sh", "-c"], ["/bin/sh", "-c"], ["bash", "-c"]):
        found = []
        for line in cmd[2].splitlines():
            m = re.search(r"(?:^|\bexec\s+|&&\s*|;\s*)stockflow\s+(.*)$", line.strip())
            if m:
                found.append(shlex.split(m[1]))
        return found
    return []


def executed(cmd: list[str]) -> list[str]:
    """What a command finally runs: the ``exec`` line of a ``sh -c`` script
    (split as the shell would), else the command itself."""
    if cmd[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
        for line in cmd[2].splitlines():
            if line.strip().startswith("exec "):
                return shlex.split(line.strip())[1:]
    return cmd


def stockflow_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        n: s for n, s in services.items() if str(s.get("image", "")).startswith(STOCKFLOW_IMAGE)
    }


def parse_stockflow(args: list[str]) -> tuple[click.Command, dict[str, Any]]:
    """Resolve `args` through the click command tree, parsing every option as
    ``stockflow`` would (unknown commands, options and bad values raise)."""
    from dataflows.cli.main import _register_commands, cli

    _register_commands()
    ctx = cli.make_context("stockflow", list(args))
    cmd: click.Command = cli
    while isinstance(cmd, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub
    return cmd, ctx.params


# --- the files -------------------------------------------------------------------------


def test_compose_files_parse_and_every_image_is_pinned() -> None:
    for path in (MAIN, CLUSTER):
        for name, service in load(path)["services"].items():
            image = service.get("image")
            if image is None:  # an override of a service from the main file
                assert path == CLUSTER, name
                continue
            image = interpolate(str(image), env_example())
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest" and re.search(r"\d", tag), (name, image)
            if image.startswith(STOCKFLOW_IMAGE):
                build = service["build"]
                assert (path.parent / build["context"] / build["dockerfile"]).is_file()
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert bases and all(re.search(r":\d[\w.-]*$", b) for b in bases), bases
    for directory in ("dataflows/", "connectors/", "indicators/", "sql/"):
        assert f"COPY {directory} {directory}" in dockerfile


def test_no_secret_is_written_down() -> None:
    for path in (MAIN, CLUSTER):
        text = path.read_text()
        for node in _mappings(yaml.safe_load(text)):
            for key, value in node.items():
                if isinstance(key, str) and SECRET_NAME.search(key) and isinstance(value, str):
                    assert re.fullmatch(r"\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}", value), (path, key)
                    # An empty default is fine (optional), a written-down one is not.
                    assert not re.search(r"-[^}]", value), f"{key} has a default value"
    example = env_example()
    secrets = [n for n in example if SECRET_NAME.search(n)]
    assert secrets, "the .env.example lists the secrets"
    assert all(example[n] == "" for n in secrets), secrets


def _mappings(node: Any) -> list[dict[Any, Any]]:
    if isinstance(node, dict):
        return [node, *(m for v in node.values() for m in _mappings(v))]
    if isinstance(node, list):
        return [m for v in node for m in _mappings(v)]
    return []


def test_every_variable_the_files_use_is_listed_in_env_example() -> None:
    used = variables(MAIN.read_text()) | variables(CLUSTER.read_text())
    assert used - set(env_example()) == set()


def test_every_stockflow_command_exists_with_valid_options_and_settings() -> None:
    from dataflows.core.config import Settings

    checked = 0
    for services in (load(MAIN)["services"], merged()):
        for name, service in stockflow_services(services).items():
            env = environment(service)
            for args in stockflow_invocations(command(service)):
                cmd, params = parse_stockflow(args)
                checked += 1
                flags = {k: v for k, v in params.items() if k in _setting_names()}
                # The settings the container would run with are valid.
                Settings.load(env=env, **flags)
                if cmd.name == "run":
                    assert params["source"] == "kafka" and params["recovery_dir"], name
    assert checked >= 4  # db init, produce, replay, run


def _setting_names() -> set[str]:
    from dataclasses import fields

    from dataflows.core.config import Settings

    return {f.name for f in fields(Settings)}


def test_environment_names_are_settings_the_code_reads() -> None:
    from dataflows.core.config import OPTIONS

    read_by_code = set()
    for package in ("dataflows", "connectors", "indicators"):
        for path in (ROOT / package).rglob("*.py"):
            read_by_code |= set(
                re.findall(r"[\"']((?:STOCKFLOW|FINNHUB)_[A-Z0-9_]+)[\"']", path.read_text())
            )
    known = {o.env for o in OPTIONS} | read_by_code
    for services in (load(MAIN)["services"], merged()):
        for name, service in services.items():
            for key in environment(service):
                if key.startswith(("STOCKFLOW_", "FINNHUB_")):
                    assert key in known, f"{name}: {key} is read by nothing"


def test_the_producer_replays_the_mounted_sample_without_an_api_key() -> None:
    producer = load(MAIN)["services"]["producer"]
    script = command(producer)[2]
    runs = [parse_stockflow(args) for args in stockflow_invocations(command(producer))]
    assert [cmd.name for cmd, _ in runs] == ["produce", "replay"]
    assert 'if [ -n "${FINNHUB_API_KEY}" ]' in script
    sample = runs[1][1]["path"]
    assert mounts(producer)[sample] == env_example()["SAMPLE_TICKS_DIR"]
    assert "${SAMPLE_TICKS_DIR:-../../shared/data/ticks}:/sample:ro" in producer["volumes"]
    assert environment(producer)["FINNHUB_API_KEY"] == ""


@pytest.mark.parametrize("producer_finnhub,codes", [("", "algoseek"), ("yes", "unset")])
def test_dataflows_read_the_sample_replay_as_algoseek_codes_and_finnhub_trades_as_finnhub(
    tmp_path: Path, producer_finnhub: str, codes: str
) -> None:
    # Arrange: stand-ins for the programs the scripts exec, which print the
    # dialect they would run with.
    for program in ("stockflow", "python"):
        stand_in = tmp_path / program
        stand_in.write_text('#!/bin/sh\necho "${STOCKFLOW_CONDITION_CODES:-unset}"\n')
        stand_in.chmod(0o755)
    services = {**load(MAIN)["services"], **{n: merged()[n] for n in ("df0", "df1")}}
    for name in ("dataflow", "df0", "df1"):
        service = services[name]
        env = {**environment(service), "PRODUCER_FINNHUB": producer_finnhub}
        env["PATH"] = f"{tmp_path}{os.pathsep}{os.environ['PATH']}"

        # Act
        out = subprocess.run(command(service), env=env, capture_output=True, text=True)

        # Assert
        assert out.stdout.strip() == codes, (name, out.stderr)
    assert environment(services["dataflow"])["PRODUCER_FINNHUB"] == ""  # .env.example: no key


def test_bytewax_cluster_processes_agree_on_addresses_ids_and_recovery() -> None:
    services = merged()
    processes = {
        n: executed(command(s))
        for n, s in services.items()
        if executed(command(s))[:3] == ["python", "-m", "bytewax.run"]
    }
    assert sorted(processes) == ["df0", "df1"]
    ids, addresses = [], set()
    for name, cmd in processes.items():
        options = dict(zip(cmd[4::2], cmd[5::2], strict=True))
        assert cmd[3] == "dataflows.market:flow"
        ids.append(int(options["-i"]))
        addresses.add(options["-a"])
        service = services[name]
        assert service["hostname"] == name and "2101" in service["expose"]
        env = environment(service)
        assert options["-r"] == env["STOCKFLOW_RECOVERY_DIR"]
        assert options["-r"] in mounts(service)
        assert env["STOCKFLOW_SOURCE"] == "kafka" and env["STOCKFLOW_METRICS_PORT"]
        assert float(options["-s"]) > 0 and "-b" in options
    assert sorted(ids) == list(range(len(processes)))
    (address,) = addresses
    assert address.split(";") == [f"{n}:2101" for n in sorted(processes)]
    init = " ".join(command(services["recovery-init"]))
    assert f"bytewax.recovery /recovery {len(processes)}" in init
    assert services["dataflow"]["profiles"] == ["single"]
    # The flow the processes import exists and builds from the environment.
    market = (ROOT / "dataflows" / "market.py").read_text()
    assert re.search(r"^\s*flow = build_flow\(settings[,)]", market, re.MULTILINE)


def test_hosts_ports_topics_and_buckets_line_up() -> None:
    services = load(MAIN)["services"]
    flow = environment(services["dataflow"])
    # Kafka: the brokers the code uses are the broker's advertised listener.
    kafka = environment(services["kafka"])
    assert f"PLAINTEXT://{flow['STOCKFLOW_KAFKA_BROKERS']}" in kafka[
        "KAFKA_ADVERTISED_LISTENERS"
    ].split(",")
    ui = environment(services["kafka-ui"])
    assert ui["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == flow["STOCKFLOW_KAFKA_BROKERS"]
    script = command(services["kafka-init"])[0]
    topics = re.search(r"for topic in ([^;]+);", script)[1].split()  # type: ignore[index]
    assert sorted(topics) == sorted(
        flow[f"STOCKFLOW_TOPIC_{t}"] for t in ("TICKS", "DLQ", "BARS", "SIGNALS")
    )
    assert f"--partitions {flow['STOCKFLOW_KAFKA_PARTITIONS']}" in script
    # MinIO: the endpoint is the minio service; the lake's bucket is the one made.
    assert flow["STOCKFLOW_S3_ENDPOINT"] == "http://minio:9000"
    assert "server" in services["minio"]["command"]
    bucket = flow["STOCKFLOW_LAKE"].removeprefix("s3://").split("/")[0]
    assert environment(services["minio-init"])["LAKE_BUCKET"] == bucket
    assert environment(services["minio"])["MINIO_ROOT_USER"] == flow["AWS_ACCESS_KEY_ID"]
    # Postgres: the DSN names the postgres service and its user and database.
    pg = environment(services["postgres"])
    assert flow["STOCKFLOW_PG_DSN"] == (
        f"postgresql://{pg['POSTGRES_USER']}@postgres:5432/{pg['POSTGRES_DB']}"
    )
    assert flow["PGPASSWORD"] == pg["POSTGRES_PASSWORD"]


def test_prometheus_scrapes_the_dataflows_metrics_port() -> None:
    for compose_services, config, flows in (
        (load(MAIN)["services"], "prometheus.yml", ["dataflow"]),
        (merged(), "prometheus.cluster.yml", ["df0", "df1"]),
    ):
        mounted = mounts(compose_services["prometheus"])["/etc/prometheus/prometheus.yml"]
        assert mounted == f"./prometheus/{config}"
        scrape = yaml.safe_load((COMPOSE / "prometheus" / config).read_text())
        job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "stockflow")
        targets = [t for c in job["static_configs"] for t in c["targets"]]
        expected = []
        for name in flows:
            port = environment(compose_services[name])["STOCKFLOW_METRICS_PORT"]
            assert port in compose_services[name]["expose"]
            assert port in str(compose_services[name]["healthcheck"]["test"])
            expected.append(f"{name}:{port}")
        assert targets == expected
        assert job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_is_provisioned_with_the_prometheus_and_the_dashboard() -> None:
    services = load(MAIN)["services"]
    grafana = services["grafana"]
    mounted = mounts(grafana)
    provisioning = COMPOSE / mounted["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (prometheus,) = datasource["datasources"]
    assert prometheus["url"] == "http://prometheus:9090"
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])
    provider = yaml.safe_load((provisioning / "dashboards" / "stockflow.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert (COMPOSE / mounted[path] / "stockflow.json").resolve() == DASHBOARD.resolve()
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/stockflow.json"
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {prometheus["uid"]}


def test_services_have_health_checks_and_dependencies_wait_for_them() -> None:
    for services in (load(MAIN)["services"], merged()):
        for name, service in services.items():
            if service.get("profiles"):
                continue
            one_shot = service.get("restart") == "no"
            if not one_shot and name not in NO_HEALTHCHECK:
                assert "healthcheck" in service, name
            for target, rule in (service.get("depends_on") or {}).items():
                condition = rule["condition"]
                if condition == "service_healthy":
                    assert "healthcheck" in services[target], (name, target)
                if condition == "service_completed_successfully":
                    assert services[target].get("restart") == "no", (name, target)
        declared = set(load(MAIN).get("volumes", {})) | set(load(CLUSTER).get("volumes", {}))
        for name, service in services.items():
            for source in mounts(service).values():
                if not source.startswith((".", "/")):
                    assert source in declared, (name, source)


# --- the dashboard against a live dataflow -------------------------------------------------


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        found = {n for t in panel["targets"] for n in METRIC.findall(t["expr"])}
        assert found, f"panel {panel['title']!r} asks for no metric"
        names |= found
    return names


def _scrape_names(port: int) -> set[str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return set()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


def test_dashboard_asks_only_for_series_the_compose_dataflow_serves(
    kafka_broker: KafkaBroker, pg_server: PgServer, real_data: Path, tmp_path: Path
) -> None:
    # Arrange: real ticks and some garbage in a fresh topic, a serving schema,
    # and the compose dataflow's own command pointed at them.
    from connectors.ddl import init_database
    from dataflows.core.config import Settings
    from dataflows.replay import replay_ticks

    wanted = dashboard_metrics()
    assert len(wanted) >= 10, sorted(wanted)
    topics = {
        t: kafka_broker.topic(f"compose-{t.lower()}", 2)
        for t in ("TICKS", "DLQ", "BARS", "SIGNALS")
    }
    settings = Settings.load(
        env={}, kafka_brokers=kafka_broker.brokers, topic_ticks=topics["TICKS"]
    )
    replay_ticks(settings, str(real_data / "ticks" / "IBM_20131007.csv.gz"))
    kafka_broker.produce(topics["TICKS"], [(None, b"not json"), (None, b'{"type":"nope"}')])
    schema = pg_server.new_schema("compose")
    init_database("postgres", Settings.load(env={}, pg_dsn=pg_server.dsn, pg_schema=schema))
    dataflow = load(MAIN)["services"]["dataflow"]
    # The service's own script (the sample replay's AlgoSeek codes: no
    # PRODUCER_FINNHUB), with the stockflow of this environment on the PATH.
    shell, flag, script = command(dataflow)
    script = script.replace("/recovery", str(tmp_path / "recovery"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKFLOW_", "AWS_"))}
    env.update(
        {
            **{f"STOCKFLOW_TOPIC_{t}": name for t, name in topics.items()},
            "STOCKFLOW_KAFKA_BROKERS": kafka_broker.brokers,
            "STOCKFLOW_LAKE": str(tmp_path / "lake"),
            "STOCKFLOW_PG_DSN": pg_server.dsn,
            "STOCKFLOW_PG_SCHEMA": schema,
            "STOCKFLOW_METRICS_PORT": str(port),
            # Short epochs and lateness: every sink writes within seconds.
            "STOCKFLOW_SNAPSHOT_INTERVAL_S": "1",
            "STOCKFLOW_LATENESS_S": "1",
        }
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = tmp_path / "dataflow.log"

    # Act: run it and scrape until every series the dashboard uses is served.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [shell, flag, script], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    served: set[str] = set()
    try:
        deadline = time.monotonic() + 90
        while not wanted <= served and proc.poll() is None and time.monotonic() < deadline:
            served = _scrape_names(port)
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # Assert
    assert wanted - served == set(), log.read_text()[-3000:]
