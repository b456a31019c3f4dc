"""The command line: the demo, and one clear line for every user mistake."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass, fields

import click
import pandas as pd
import pytest
from deltalake import DeltaTable

from tests.conftest import ROOT, cli, free_port

DEMO_TABLES = [
    "bronze/late_ticks",
    "bronze/rejects",
    "bronze/ticks",
    "silver/bars_1m",
    "silver/bars_5m",
    "silver/bars_15m",
    "silver/bars_1h",
    "silver/bars_1d",
    "gold/indicators_1m",
    "gold/indicators_5m",
    "gold/indicators_15m",
    "gold/indicators_1h",
    "gold/indicators_1d",
    "gold/signals",
]


def test_demo_runs_without_servers_and_leaves_a_readable_lake(tmp_path):
    lake = tmp_path / "lake"

    result = cli("demo", "--lake", str(lake), "--ticks", "300000", timeout=60)

    assert result.returncode == 0, result.stderr
    assert "silver/bars_1m" in result.stdout and "ticks in 300,000" in result.stdout
    # The summary lists tables by layer, table, then resolution in time order.
    listed = re.findall(r"^(\w+/\w+) +[\d,]+ +[\d,]+$", result.stdout, re.MULTILINE)
    assert listed == DEMO_TABLES, listed
    counts = {}
    for table in ("bronze/ticks", "bronze/rejects", "bronze/late_ticks", "silver/bars_1m"):
        counts[table] = DeltaTable(lake / table).to_pyarrow_dataset().count_rows()
    assert counts["bronze/ticks"] + counts["bronze/rejects"] == 300_000
    assert counts["silver/bars_1m"] > 8 * 100
    bars = DeltaTable(lake / "silver/bars_1m").to_pandas()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars[["open", "close"]].max(axis=1) <= bars["high"]).all()


def test_demo_default_size_is_one_million_ticks(tmp_path):
    result = cli("demo", "--lake", str(tmp_path / "lake"), timeout=60)

    assert result.returncode == 0, result.stderr
    assert "ticks in 1,000,000" in result.stdout


def _one_line_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stockflow: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--source", "file:/no/such/ticks.csv"], "no such tick file"),
        (["run", "--source", "ftp:somewhere"], "unknown source"),
        (["run", "--source", "synthetic", "--sink", "parquet,carrier-pigeon"], "unknown sink"),
        (
            ["run", "--config", "/no/such/config.toml"],
            "config file /no/such/config.toml does not exist",
        ),
    ],
)
def test_user_mistakes_end_in_one_clear_line(args, needle, tmp_path):
    result = cli(*args, "--lake", str(tmp_path / "lake"))

    assert needle in _one_line_error(result)


def test_unreachable_s3_endpoint_ends_in_one_clear_line(tmp_path):
    port = free_port()  # nothing listens here

    result = cli(
        "run",
        "--source",
        "synthetic",
        "--lake",
        "s3://bucket/lake",
        "--s3-endpoint",
        f"http://127.0.0.1:{port}",
        env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
        timeout=120,
    )

    line = _one_line_error(result)
    assert "cannot reach S3" in line and str(port) in line


def test_missing_s3_bucket_is_named(tmp_path, s3_server):
    result = cli(
        "run",
        "--source",
        "synthetic",
        "--lake",
        "s3://no-such-bucket/lake",
        "--s3-endpoint",
        s3_server.endpoint,
    )

    assert "'no-such-bucket' does not exist" in _one_line_error(result)


def test_bad_config_value_names_setting_and_origin(tmp_path):
    config = tmp_path / "stockflow.toml"
    config.write_text('[bars]\nlateness_s = "soon"\n')

    line = _one_line_error(cli("run", "--config", str(config)))

    assert "lateness_s" in line and str(config) in line


def test_unknown_config_key_is_refused(tmp_path):
    config = tmp_path / "stockflow.toml"
    config.write_text("[lake]\nurll = 'x'\n")

    assert "unknown key lake.urll" in _one_line_error(cli("run", "--config", str(config)))


def test_numeric_timestamps_without_unit_are_refused_not_guessed(tmp_path):
    path = tmp_path / "epoch.csv"
    path.write_text("ts,symbol,price,size\n1700000000123,AAPL,1.5,10\n")

    assert "--ts-unit" in _one_line_error(
        cli("run", "--source", f"file:{path}", "--lake", str(tmp_path / "l"))
    )


def test_flags_beat_environment_beat_toml(tmp_path):
    from dataflows.core.config import Settings

    config = tmp_path / "stockflow.toml"
    config.write_text("[lake]\nurl = 'from-toml'\n[bars]\nlateness_s = 7\n[run]\nworkers = 3\n")
    env = {"STOCKFLOW_LAKE": "from-env", "STOCKFLOW_LATENESS_S": "9"}

    s = Settings.load(config_file=config, env=env, lake="from-flag")

    assert (s.lake, s.lateness_s, s.workers) == ("from-flag", 9.0, 3)


# --- every flag an error (or any text) names exists on the command that shows it -----------

_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_STOCKFLOW_COMMAND = re.compile(r"\bstockflow((?: [a-z][a-z-]*)+)")
_PACKAGES = ("dataflows", "connectors", "indicators")

# Functions that are not a command's own callback but name flags in their
# texts, and the commands whose users see those texts (the flags must exist on
# each of them). A function that names flags and is missing here fails
# `test_every_text_that_names_flags_is_mapped_to_its_commands`: add it.
SHOWN_BY: dict[tuple[str, str], frozenset[str]] = {
    ("dataflows/backfill.py", "run_backfill"): frozenset({"backfill"}),
    ("dataflows/backfill.py", "_plan"): frozenset({"backfill"}),
    # A bounded Kafka source: only `run` reads Kafka with --bounded.
    ("connectors/kafka/source.py", "_TickTopicPartition._check_end"): frozenset({"run"}),
    **{
        (f"dataflows/bench/{m}.py", "*"): frozenset({"bench"})
        for m in (
            "scenarios",
            "harness",
            "baselines",
            "kafka",
            "soak",
            "lake",
            "backfill1m",
            "dashboard",
        )
    },
    # bench_kafka calls replay_ticks without a speed: only `replay` can show the --speed check.
    ("dataflows/replay.py", "replay_ticks"): frozenset({"replay"}),
    # The benchmark's line describes the `run` it timed (`--source kafka --bounded`).
    ("dataflows/bench/kafka.py", "KafkaBench.render"): frozenset({"run"}),
    # Only `run` serves metrics (demo loads no environment, backfill turns them off).
    ("dataflows/core/metrics.py", "serve"): frozenset({"run"}),
    ("dataflows/report/page.py", "write_report"): frozenset({"report"}),
    ("dataflows/report/page.py", "require_resolution"): frozenset({"report"}),
    ("dataflows/cli/dashboard.py", "_check_port"): frozenset({"dashboard"}),
    ("dataflows/testing/servers.py", "postgres_server"): frozenset({"bench"}),
    # The recovery texts need a recovery store: only `run` has one.
    ("dataflows/runner.py", "execute"): frozenset({"run"}),
    ("dataflows/testing/servers.py", "tansu_broker"): frozenset({"bench"}),
    ("connectors/bar_files.py", "_check"): frozenset({"backfill"}),
    ("connectors/files.py", "inspect_tick_file"): frozenset({"run", "backfill", "replay", "bench"}),
    ("connectors/files.py", "_Chain.__init__"): frozenset({"run"}),
    ("dataflows/producer.py", "FinnhubProducer.__init__"): frozenset({"produce"}),
    ("connectors/finnhub/source.py", "make_source"): frozenset({"run"}),
    ("connectors/kafka/client.py", "check_reachable"): frozenset(
        {"run", "replay", "produce", "backfill", "bench"}
    ),
    ("connectors/kafka/client.py", "_admin_error"): frozenset(
        {"run", "replay", "produce", "backfill", "bench"}
    ),
    ("connectors/lake.py", "_retrying"): frozenset({"run", "demo", "backfill", "bench"}),
    # Resuming lake writers need a recovery store: only `run` has one.
    ("connectors/lake.py", "_LakePartition._resume"): frozenset({"run"}),
    ("connectors/lake_tables.py", "parse_retention"): frozenset({"lake vacuum"}),
    ("connectors/lake_tables.py", "vacuum"): frozenset({"lake vacuum"}),
}

# Known wrong texts in modules other engineers own (reported, not yet fixed).
# Strict: the case fails as soon as the text is fixed, so this list shrinks.
KNOWN_WRONG: dict[tuple[str, str, str], str] = {}


def _commands() -> dict[str, click.Command]:
    """Every `stockflow` command by its path ("run", "db init")."""
    from dataflows.cli import _register_commands, cli

    _register_commands()
    found: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: str) -> None:
        for name, cmd in group.commands.items():
            path = f"{prefix}{name}"
            if isinstance(cmd, click.Group):
                walk(cmd, f"{path} ")
            else:
                found[path] = cmd

    walk(cli, "")
    return found


def _options(path: str) -> set[str]:
    """The option strings a user can type with `stockflow <path>` (the
    command's own and those of the groups above it)."""
    from dataflows.cli import cli

    names: set[str] = set()
    cmd: click.Command = cli
    for word in ["", *path.split()]:
        if word:
            cmd = cmd.commands[word]  # type: ignore[attr-defined]
        for param in cmd.params:
            if isinstance(param, click.Option):
                names.update(param.opts + param.secondary_opts)
    return names


@dataclass(frozen=True)
class _Text:
    module: str
    function: str  # dotted qualname of the enclosing function ("" at module level)
    line: int
    text: str  # f-string fields as {}


def _texts_naming_flags() -> list[_Text]:
    """Every string in the package that names a flag, except docstrings and
    strings that are a bare option (click declarations, other programs' argv)."""

    class Visitor(ast.NodeVisitor):
        def __init__(self, module: str) -> None:
            self.module = module
            self.stack: list[str] = []
            self.docs: set[int] = set()
            self.found: list[_Text] = []

        def _scope(self, node: ast.AST, name: str | None) -> None:
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                self.docs.add(id(body[0].value))
            if name:
                self.stack.append(name)
            self.generic_visit(node)
            if name:
                self.stack.pop()

        def visit_Module(self, node: ast.Module) -> None:
            self._scope(node, None)

        def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
            self._scope(node, node.name)

        visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

        def visit_ClassDef(self, node: ast.ClassDef) -> None:
            self._scope(node, node.name)

        def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
            # not descending: format specs are not text
            self._text(
                node,
                "".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values),
            )

        def visit_Constant(self, node: ast.Constant) -> None:
            if isinstance(node.value, str) and id(node) not in self.docs:
                self._text(node, node.value)

        def _text(self, node: ast.expr, text: str) -> None:
            if re.fullmatch(r"--[\w-]+(/--[\w-]+)?", text.strip()) or not _FLAG.search(text):
                return
            self.found.append(_Text(self.module, ".".join(self.stack), node.lineno, text))

    texts: list[_Text] = []
    for package in _PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            visitor = Visitor(path.relative_to(ROOT).as_posix())
            visitor.visit(ast.parse(path.read_text(), str(path)))
            texts.extend(visitor.found)
    return texts


def _named_command(words: str, commands: dict[str, click.Command]) -> str | None:
    """The command path at the start of `words` ("db init --target" -> "db init")."""
    path = ""
    for word in words.split():
        candidate = f"{path} {word}".strip()
        if candidate in commands:
            return candidate
        if not any(c.startswith(candidate + " ") for c in commands):
            return None
        path = candidate
    return None


def _flags_by_command(
    text: str, commands: dict[str, click.Command]
) -> list[tuple[str | None, str]]:
    """Each flag in `text` with the command a `stockflow <command>` right before
    it in the same clause names (None: the text's own commands)."""
    out: list[tuple[str | None, str]] = []
    for clause in re.split(r"[;()`,]|\. ", text):
        named = [
            (m.end(), _named_command(m.group(1), commands))
            for m in _STOCKFLOW_COMMAND.finditer(clause)
        ]
        for flag in _FLAG.finditer(clause):
            before = [cmd for end, cmd in named if end <= flag.start()]
            out.append((before[-1] if before else None, flag.group()))
    return out


def _callbacks(commands: dict[str, click.Command]) -> dict[tuple[str, str], str]:
    """(module file, qualname) of each command's callback -> the command."""
    out = {}
    for path, cmd in commands.items():
        fn = cmd.callback
        assert fn is not None, path
        module = fn.__module__.replace(".", "/") + ".py"
        out[(module, fn.__qualname__)] = path
    return out


def _shown_by(text: _Text, commands: dict[str, click.Command]) -> frozenset[str] | None:
    own = _callbacks(commands).get((text.module, text.function.split(".")[0]))
    if own is not None:
        return frozenset({own})
    return SHOWN_BY.get((text.module, text.function)) or SHOWN_BY.get((text.module, "*"))


def _flag_cases() -> list:
    commands = _commands()
    cases = []
    for text in _texts_naming_flags():
        for named, flag in _flags_by_command(text.text, commands):
            targets = {named} if named else (_shown_by(text, commands) or {None})
            for command in sorted(targets, key=str):
                wrong = KNOWN_WRONG.get((text.module, text.function, str(command)))
                marks = [pytest.mark.xfail(strict=True, reason=wrong)] if wrong else []
                cases.append(
                    pytest.param(
                        text,
                        command,
                        flag,
                        marks=marks,
                        id=f"{text.module}:{text.line}:{command}:{flag}",
                    )
                )
    return cases


def test_the_flag_scan_finds_the_texts_it_must_check():
    # The scan can fail: it sees flags in errors, f-strings and help texts, and
    # tells a flag of another command ("stockflow db init --target") apart.
    commands = _commands()
    texts = {(t.module, t.function): t.text for t in _texts_naming_flags()}

    assert "--start must be before --end" in texts[("dataflows/cli/backfill.py", "backfill")]
    assert "--metrics-port" in texts[("dataflows/core/metrics.py", "serve")]
    assert "--symbol" in texts[("dataflows/cli/report.py", "report_cmd")]  # a help text
    assert ("dataflows/cli/main.py", "run_cmd") not in texts  # option declarations are not texts
    assert _flags_by_command("run `stockflow db init --target postgres` first", commands) == [
        ("db init", "--target")
    ]
    assert _flags_by_command("use --sink x (or stockflow demo --lake y)", commands) == [
        (None, "--sink"),
        ("demo", "--lake"),
    ]


def test_every_text_that_names_flags_is_mapped_to_its_commands():
    commands = _commands()
    unmapped = [
        f"{t.module}:{t.line} ({t.function or 'module level'}): {t.text!r}"
        for t in _texts_naming_flags()
        if any(named is None for named, _ in _flags_by_command(t.text, commands))
        and _shown_by(t, commands) is None
    ]

    assert unmapped == [], "add these functions to SHOWN_BY with the commands that show them"


@pytest.mark.parametrize(("text", "command", "flag"), _flag_cases())
def test_every_flag_a_text_names_exists_on_the_command_that_shows_it(text, command, flag):
    assert command is not None, f"{text.module}:{text.line} is not in SHOWN_BY"
    options = _options(command)

    assert flag in options, (
        f"{text.module}:{text.line} names {flag}, which `stockflow {command}` does not have "
        f"({', '.join(sorted(options))}): {text.text!r}"
    )


def _setting_options() -> list:
    from dataflows.core.config import Settings

    settings = {f.name for f in fields(Settings)}
    cases = []
    for path, cmd in _commands().items():
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name in settings:
                cases.append(pytest.param(path, cmd, param, id=f"{path}:{param.opts[0]}"))
    return cases


def _valid_value(param: click.Option) -> object:
    from dataflows.core.config import Settings

    default = getattr(Settings(), param.name)
    if default is not None:
        return ",".join(default) if isinstance(default, tuple) else default
    if param.is_flag:
        return True
    if isinstance(param.type, click.Choice):
        return param.type.choices[0]
    if param.name.endswith(("_url", "_endpoint")):
        return "http://127.0.0.1:1"
    return {click.INT: 1, click.FLOAT: 1.0}.get(param.type, "x")


@pytest.mark.parametrize(("path", "cmd", "param"), _setting_options())
def test_a_setting_given_as_a_flag_names_the_flag_the_user_typed(path, cmd, param):
    from dataflows.core.config import Settings

    with click.Context(cmd, info_name=path):
        settings = Settings.load(env={}, **{param.name: _valid_value(param)})

    assert settings.origin[param.name] in param.opts, (path, settings.origin[param.name])


@pytest.mark.parametrize(
    ("command", "args", "env", "setting"),
    [
        ("run", ["--sink", "parquet,nope", "--lake", "{lake}"], {}, "sinks"),
        ("run", ["--lateness", "-1", "--lake", "{lake}"], {}, "lateness_s"),
        ("run", ["--workers", "0", "--lake", "{lake}"], {}, "workers"),
        ("backfill", ["--source", "x.csv", "--sink", "nope", "--lake", "{lake}"], {}, "sinks"),
        ("demo", ["--ticks", "0", "--lake", "{lake}"], {}, "synthetic_ticks"),
        (
            "db init",
            ["--target", "postgres", "--schema", "no such"],
            {"STOCKFLOW_PG_DSN": "postgresql://127.0.0.1:1/none"},
            "pg_schema",
        ),
    ],
)
def test_a_bad_flag_value_is_blamed_on_the_flag_the_user_typed(
    command, args, env, setting, tmp_path
):
    args = [a.replace("{lake}", str(tmp_path / "lake")) for a in args]

    line = _one_line_error(cli(*command.split(), *args, env=env))

    assert f"bad setting {setting} (from --" in line
    named = set(_FLAG.findall(line))
    assert named and named <= _options(command), (line, sorted(_options(command)))


def test_bytewax_run_of_the_market_flow_ends_with_the_run_summary_on_stderr(real_data, tmp_path):
    ticks = real_data / "ticks" / "IBM_20131007.csv.gz"
    lake = tmp_path / "lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKFLOW_", "BYTEWAX_"))}
    env.update(STOCKFLOW_SOURCE=f"file:{ticks}", STOCKFLOW_LAKE=str(lake))

    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.market:flow", "-w", "2"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""
    # Every table with the rows and files the lake holds, counted independently.
    listed = {
        table: (int(rows.replace(",", "")), int(files.replace(",", "")))
        for table, rows, files in re.findall(
            r"^(\w+/\w+) +([\d,]+) +([\d,]+)$", done.stderr, re.MULTILINE
        )
    }
    assert [t for t in DEMO_TABLES if t in listed] == list(listed)
    for table, (rows, files) in listed.items():
        path = lake / table
        written = DeltaTable(path).to_pyarrow_dataset() if (path / "_delta_log").exists() else None
        assert rows == (written.count_rows() if written else 0), table
        assert files == (len(written.files) if written else 0), table
    in_file = len(pd.read_csv(ticks))
    assert listed["bronze/ticks"][0] == in_file
    assert f"ticks in {in_file:,} = accepted {in_file:,} + rejected 0" in done.stderr
    assert f"lake: {lake}" in done.stderr


@pytest.mark.parametrize(("users", "ours", "childs"), [(None, "1", None), ("4", "4", "4")])
def test_openblas_is_single_threaded_unless_the_user_said_otherwise(users, ours, childs):
    """The `stockflow` command sets OPENBLAS_NUM_THREADS=1 for itself before
    numpy is imported; a value of the user's wins, and the environment the
    bench hands to its baselines is the user's."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if users is not None:
        env["OPENBLAS_NUM_THREADS"] = users
    code = (
        "import os, sys; import dataflows.cli; from dataflows.core.blas import users_environment; "
        "assert 'numpy' in sys.modules; "
        "print(os.environ.get('OPENBLAS_NUM_THREADS'), "
        "users_environment(os.environ).get('OPENBLAS_NUM_THREADS'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [ours, str(childs)]


def test_a_finished_command_exits_even_with_an_executor_left_open():
    """The command's fast exit shuts threads down as the interpreter does: an
    executor nobody shut down (its idle worker waits for work) does not keep
    the process alive, and its submitted job has run."""
    code = (
        "from concurrent.futures import ThreadPoolExecutor; "
        "from dataflows.cli.main import _exit_now; "
        "pool = ThreadPoolExecutor(1); pool.submit(print, 'job ran'); _exit_now(3)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (3, "job ran\n")
