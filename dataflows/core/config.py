"""Run configuration: flags > environment (``STOCKFLOW_*``) > TOML file > defaults.

Every setting has one name in each layer, listed in :data:`OPTIONS` (and in
the README's configuration table, generated from the same list):

========================  ==========================  ===========================
setting                   environment                 TOML (``section.key``)
========================  ==========================  ===========================
see ``OPTIONS`` below
========================  ==========================  ===========================

Values are validated when loaded; a bad value ends in one line naming the
setting, where it came from and what is allowed.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataflows.core.errors import UserError
from dataflows.core.shards import DEFAULT_SHARDS
from indicators import (
    RESOLUTIONS,
    IndicatorConfig,
    IndicatorConfigError,
    SignalConfig,
    SignalConfigError,
)

if TYPE_CHECKING:
    from dataflows.core.sessions import CalendarConfig

# Sale-condition rule sets and the condition-code dialects a source may speak
# (dataflows.core.conditions applies them).
PROFILES = ("cta", "lean", "off")
DIALECTS = ("auto", "algoseek", "finnhub", "sip")
SINKS = ("parquet", "postgres", "snowflake", "kafka")
SOURCES = ("synthetic", "file:PATH", "kafka", "finnhub")


@dataclass(frozen=True)
class GoldConfig:
    """Indicator periods and signal rules (from the TOML ``[indicators]`` and
    ``[signals]`` tables); the resolution is filled in per series."""

    indicators: IndicatorConfig = field(default_factory=IndicatorConfig)
    signals: SignalConfig = field(default_factory=SignalConfig)
    # Seeds a new series from earlier bars (dataflows.warmup.LakeWarmup).
    warmup: Any = None
    # Whether the state is snapshotted for recovery. Bytewax asks for a
    # snapshot at every epoch's end, recovery or not; without recovery the
    # copy of every series' windows is thrown away, and for a whole market
    # it is as big as the state itself (the RSS would double each epoch).
    snapshots: bool = True
    # Emit each series' state at the end of the input (a backfill's hand-over,
    # written to gold/series_state).
    hand_over: bool = False
    # The market calendars (Settings.calendar/calendars, kept in step by
    # Settings): the session VWAP restarts at each symbol's trading day.
    calendar: str = "XNYS"
    calendars: tuple[str, ...] = ()

    def for_resolution(self, res: str) -> IndicatorConfig:
        return _with_resolution(self.indicators, res)

    def calendar_config(self) -> CalendarConfig:
        """Which market calendar each symbol follows (names checked)."""
        return calendar_config(self.calendar, self.calendars)


def calendar_config(
    default: str, items: tuple[str, ...], origin: Mapping[str, str] | None = None
) -> CalendarConfig:
    """A :class:`~dataflows.core.sessions.CalendarConfig` from the ``calendar``
    setting and the ``calendars`` items (``SYMBOL=CALENDAR``); an unknown
    calendar name is a UserError naming the setting (and where it came from)."""
    from dataflows.core.sessions import CalendarConfig, check_calendar  # numpy, calendars

    overrides = tuple(
        (sym.strip().upper(), cal.strip()) for sym, _, cal in (i.partition("=") for i in items)
    )
    config = CalendarConfig(default, overrides)
    for name in sorted(config.names()):
        try:
            check_calendar(name)
        except UserError as exc:
            where = (origin or {}).get("calendars" if name != default else "calendar")
            raise UserError(f"bad setting calendar (from {where or 'default'}): {exc}") from None
    return config


@cache
def _with_resolution(config: IndicatorConfig, res: str) -> IndicatorConfig:
    # One config object per resolution, not one per series.
    return replace(config, resolution=res)


@dataclass(frozen=True)
class Option:
    name: str
    env: str
    toml: str | None  # None: environment only (secrets)
    help: str
    secret: bool = False


OPTIONS: tuple[Option, ...] = (
    Option(
        "source",
        "STOCKFLOW_SOURCE",
        "run.source",
        "synthetic | file:PATH (file, dir or glob) | kafka | finnhub",
    ),
    Option(
        "sinks",
        "STOCKFLOW_SINKS",
        "run.sinks",
        "comma list of sinks: parquet, postgres, snowflake, kafka",
    ),
    Option("workers", "STOCKFLOW_WORKERS", "run.workers", "Bytewax worker threads in this process"),
    Option("bounded", "STOCKFLOW_BOUNDED", "run.bounded", "stop when the source is exhausted"),
    Option(
        "recovery_dir",
        "STOCKFLOW_RECOVERY_DIR",
        "run.recovery_dir",
        "Bytewax recovery store (enables exactly-once)",
    ),
    Option(
        "snapshot_interval_s",
        "STOCKFLOW_SNAPSHOT_INTERVAL_S",
        "run.snapshot_interval_s",
        "seconds between snapshots (Bytewax epoch length)",
    ),
    Option(
        "backup_interval_s",
        "STOCKFLOW_BACKUP_INTERVAL_S",
        "run.backup_interval_s",
        "keep superseded snapshots this long (set to how often you back up the store)",
    ),
    Option(
        "shards",
        "STOCKFLOW_SHARDS",
        "run.shards",
        "symbol shards (units of parallelism for bar state)",
    ),
    Option("batch_size", "STOCKFLOW_BATCH_SIZE", "run.batch_size", "rows per source batch"),
    Option(
        "metrics_port",
        "STOCKFLOW_METRICS_PORT",
        "run.metrics_port",
        "serve Prometheus metrics on this port during a run (ours and Bytewax's)",
    ),
    Option(
        "metrics_addr",
        "STOCKFLOW_METRICS_ADDR",
        "run.metrics_addr",
        "address the metrics endpoint listens on (0.0.0.0 to be scraped from other hosts)",
    ),
    Option("lake", "STOCKFLOW_LAKE", "lake.url", "lake root: local path or s3://bucket/prefix"),
    Option("s3_endpoint", "STOCKFLOW_S3_ENDPOINT", "lake.s3_endpoint", "S3/MinIO endpoint URL"),
    Option(
        "max_rows_per_file",
        "STOCKFLOW_MAX_ROWS_PER_FILE",
        "lake.max_rows_per_file",
        "roll a Parquet file at this many rows",
    ),
    Option(
        "commit_interval_s",
        "STOCKFLOW_COMMIT_INTERVAL_S",
        "lake.commit_interval_s",
        "commit a lake writer's rows (one Delta commit per table and worker) once the "
        "oldest waited this long",
    ),
    # Table maintenance (connectors.lake_tables)
    Option(
        "lake_target_file_mb",
        "STOCKFLOW_LAKE_TARGET_FILE_MB",
        "lake.target_file_mb",
        "compaction and backfills write files near this size (MiB)",
    ),
    Option(
        "lake_compact_after_files",
        "STOCKFLOW_LAKE_COMPACT_AFTER_FILES",
        "lake.compact_after_files",
        "auto-compaction rewrites a closed date partition holding more files than this",
    ),
    Option(
        "lake_close_after_s",
        "STOCKFLOW_LAKE_CLOSE_AFTER_S",
        "lake.close_after_s",
        "a date partition counts as closed this long after its day ended",
    ),
    Option(
        "lake_checkpoint_interval",
        "STOCKFLOW_LAKE_CHECKPOINT_INTERVAL",
        "lake.checkpoint_interval",
        "write a Delta checkpoint (and trim the log) every this many versions",
    ),
    Option(
        "lateness_s",
        "STOCKFLOW_LATENESS_S",
        "bars.lateness_s",
        "allowed lateness of out-of-order ticks",
    ),
    Option(
        "resolutions",
        "STOCKFLOW_RESOLUTIONS",
        "bars.resolutions",
        "bar resolutions: 1m plus roll-ups among 5m, 15m, 1h, 1d",
    ),
    Option(
        "warmup",
        "STOCKFLOW_WARMUP",
        "bars.warmup",
        "seed each series' indicators from the lake's earlier bars (live handover)",
    ),
    Option(
        "live",
        "STOCKFLOW_LIVE",
        "bars.live",
        "watermarks also follow the wall clock (quiet symbols); default: on for live sources",
    ),
    Option(
        "sale_conditions",
        "STOCKFLOW_SALE_CONDITIONS",
        "bars.sale_conditions",
        "cta: trades set bar values by the consolidated tape's sale-condition rules | "
        "lean: by QuantConnect's bar rules for AlgoSeek data | off",
    ),
    Option(
        "condition_codes",
        "STOCKFLOW_CONDITION_CODES",
        "bars.condition_codes",
        "how to read condition codes: auto (files: algoseek, messages: finnhub) | algoseek "
        "| finnhub | sip",
    ),
    Option(
        "daily_session",
        "STOCKFLOW_DAILY_SESSION",
        "bars.daily_session",
        "daily bars over the regular session or the extended day: regular | extended",
    ),
    Option(
        "calendar",
        "STOCKFLOW_CALENDAR",
        "bars.calendar",
        "market calendar of symbols (exchange-calendars name, e.g. XNYS, or 24/7)",
    ),
    Option(
        "calendars",
        "STOCKFLOW_CALENDARS",
        "bars.calendars",
        "per-symbol calendars, comma list of SYMBOL=CALENDAR (symbols with ':' default to 24/7)",
    ),
    Option(
        "ts_unit",
        "STOCKFLOW_TS_UNIT",
        "files.ts_unit",
        "unit of integer epoch ts in tick files: s|ms|us|ns",
    ),
    Option(
        "synthetic_ticks",
        "STOCKFLOW_SYNTHETIC_TICKS",
        "synthetic.ticks",
        "ticks the synthetic source generates",
    ),
    Option(
        "synthetic_seed",
        "STOCKFLOW_SYNTHETIC_SEED",
        "synthetic.seed",
        "seed of the synthetic source",
    ),
    Option(
        "synthetic_symbols",
        "STOCKFLOW_SYNTHETIC_SYMBOLS",
        "synthetic.symbols",
        "comma list of synthetic symbols",
    ),
    # Kafka (librdkafka settings pass through; secrets from the environment only)
    Option(
        "kafka_brokers", "STOCKFLOW_KAFKA_BROKERS", "kafka.brokers", "bootstrap servers, comma list"
    ),
    Option("topic_ticks", "STOCKFLOW_TOPIC_TICKS", "kafka.topic_ticks", "input topic of raw ticks"),
    Option("topic_dlq", "STOCKFLOW_TOPIC_DLQ", "kafka.topic_dlq", "dead-letter topic for rejects"),
    Option(
        "topic_bars", "STOCKFLOW_TOPIC_BARS", "kafka.topic_bars", "output topic of 1-minute bars"
    ),
    Option(
        "topic_signals", "STOCKFLOW_TOPIC_SIGNALS", "kafka.topic_signals", "output topic of signals"
    ),
    Option(
        "kafka_partitions",
        "STOCKFLOW_KAFKA_PARTITIONS",
        "kafka.partitions",
        "partitions of topics stockflow creates",
    ),
    Option("kafka_client_id", "STOCKFLOW_KAFKA_CLIENT_ID", "kafka.client_id", "Kafka client id"),
    Option(
        "kafka_dlq",
        "STOCKFLOW_KAFKA_DLQ",
        "kafka.dlq",
        "rejects of message sources to topic_dlq (of a Kafka source: whatever the sinks)",
    ),
    Option(
        "kafka_bounded_idle_timeout_s",
        "STOCKFLOW_KAFKA_BOUNDED_IDLE_TIMEOUT_S",
        "kafka.bounded_idle_timeout_s",
        "bounded runs: fail when no partition advances this long short of its end",
    ),
    Option(
        "kafka_security_protocol",
        "STOCKFLOW_KAFKA_SECURITY_PROTOCOL",
        "kafka.security_protocol",
        "PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL",
    ),
    Option(
        "kafka_sasl_mechanism",
        "STOCKFLOW_KAFKA_SASL_MECHANISM",
        "kafka.sasl_mechanism",
        "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512",
    ),
    Option(
        "kafka_sasl_username", "STOCKFLOW_KAFKA_SASL_USERNAME", "kafka.sasl_username", "SASL user"
    ),
    Option(
        "kafka_sasl_password",
        "STOCKFLOW_KAFKA_SASL_PASSWORD",
        None,
        "SASL password (environment only)",
        secret=True,
    ),
    # Postgres
    Option(
        "pg_dsn",
        "STOCKFLOW_PG_DSN",
        "postgres.dsn",
        "libpq connection string (password: PGPASSWORD or the env DSN)",
    ),
    Option("pg_schema", "STOCKFLOW_PG_SCHEMA", "postgres.schema", "schema of the serving tables"),
    # Snowflake
    Option(
        "snowflake_account",
        "STOCKFLOW_SNOWFLAKE_ACCOUNT",
        "snowflake.account",
        "account identifier",
    ),
    Option("snowflake_user", "STOCKFLOW_SNOWFLAKE_USER", "snowflake.user", "user"),
    Option(
        "snowflake_password",
        "STOCKFLOW_SNOWFLAKE_PASSWORD",
        None,
        "password (environment only)",
        secret=True,
    ),
    Option(
        "snowflake_private_key_file",
        "STOCKFLOW_SNOWFLAKE_PRIVATE_KEY_FILE",
        "snowflake.private_key_file",
        "key-pair auth: PEM private key file",
    ),
    Option(
        "snowflake_private_key_passphrase",
        "STOCKFLOW_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE",
        None,
        "passphrase of an encrypted private key file (environment only)",
        secret=True,
    ),
    Option("snowflake_role", "STOCKFLOW_SNOWFLAKE_ROLE", "snowflake.role", "role"),
    Option(
        "snowflake_warehouse", "STOCKFLOW_SNOWFLAKE_WAREHOUSE", "snowflake.warehouse", "warehouse"
    ),
    Option("snowflake_database", "STOCKFLOW_SNOWFLAKE_DATABASE", "snowflake.database", "database"),
    Option("snowflake_schema", "STOCKFLOW_SNOWFLAKE_SCHEMA", "snowflake.schema", "schema"),
    # Finnhub
    Option(
        "finnhub_api_key",
        "FINNHUB_API_KEY",
        None,
        "Finnhub API key (environment only)",
        secret=True,
    ),
    Option(
        "finnhub_symbols",
        "STOCKFLOW_FINNHUB_SYMBOLS",
        "finnhub.symbols",
        "symbols of the finnhub source and of stockflow produce (default AAPL,MSFT,TSLA,GOOGL,AMZN)",
    ),
    Option(
        "finnhub_calls_per_minute",
        "STOCKFLOW_FINNHUB_CALLS_PER_MINUTE",
        "finnhub.calls_per_minute",
        "REST calls per minute your Finnhub plan allows (free tier 60)",
    ),
    Option(
        "finnhub_api_url",
        "STOCKFLOW_FINNHUB_API_URL",
        "finnhub.api_url",
        "Finnhub REST base URL (a proxy; default finnhub-python's)",
    ),
    Option(
        "finnhub_ws_url",
        "STOCKFLOW_FINNHUB_WS_URL",
        "finnhub.ws_url",
        "Finnhub websocket endpoint",
    ),
    # stockflow dashboard
    Option(
        "dashboard_backend",
        "STOCKFLOW_DASHBOARD_BACKEND",
        "dashboard.backend",
        "what the dashboard reads: auto (Postgres when pg_dsn is set, else the lake) | lake "
        "| postgres",
    ),
    Option(
        "dashboard_address",
        "STOCKFLOW_DASHBOARD_ADDRESS",
        "dashboard.address",
        "address the dashboard listens on (0.0.0.0 to serve other hosts)",
    ),
    Option("dashboard_port", "STOCKFLOW_DASHBOARD_PORT", "dashboard.port", "dashboard port"),
    Option(
        "dashboard_refresh_s",
        "STOCKFLOW_DASHBOARD_REFRESH_S",
        "dashboard.refresh_s",
        "seconds between the dashboard's refreshes",
    ),
    Option(
        "dashboard_metrics_url",
        "STOCKFLOW_DASHBOARD_METRICS_URL",
        "dashboard.metrics_url",
        "a run's metrics endpoint for the Pipeline screen (http://host:9100/metrics)",
    ),
)

DASHBOARD_BACKENDS = ("auto", "lake", "postgres")

SECRETS = tuple(o.name for o in OPTIONS if o.secret)


@dataclass(frozen=True)
class Settings:
    """Everything a run needs; build with :meth:`load`."""

    source: str = "synthetic"
    sinks: tuple[str, ...] = ("parquet",)
    workers: int = 1
    bounded: bool = False
    recovery_dir: str | None = None
    snapshot_interval_s: float = 10.0
    backup_interval_s: float = 0.0
    shards: int = DEFAULT_SHARDS
    batch_size: int = 65_536
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    lake: str = "./lake"
    s3_endpoint: str | None = None
    max_rows_per_file: int = 1_000_000
    lake_partitions: int | None = None  # writers per lake table (None: one per worker)
    commit_interval_s: float = 60.0
    lake_target_file_mb: int = 128
    lake_compact_after_files: int = 4
    lake_close_after_s: float = 3600.0
    lake_checkpoint_interval: int = 100
    lateness_s: float = 5.0
    resolutions: tuple[str, ...] = RESOLUTIONS
    warmup: bool = False
    live: bool | None = None
    sale_conditions: str = "cta"
    condition_codes: str = "auto"
    daily_session: str = "regular"
    calendar: str = "XNYS"
    calendars: tuple[str, ...] = ()
    ts_unit: str | None = None
    synthetic_ticks: int = 1_000_000
    synthetic_seed: int = 7
    synthetic_symbols: tuple[str, ...] = ()
    kafka_brokers: str = "localhost:9092"
    topic_ticks: str = "ticks.raw"
    topic_dlq: str = "ticks.dlq"
    topic_bars: str = "bars.1m"
    topic_signals: str = "signals"
    kafka_partitions: int = 4
    kafka_client_id: str = "stockflow"
    kafka_dlq: bool = True
    kafka_bounded_idle_timeout_s: float = 60.0
    kafka_security_protocol: str | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    pg_dsn: str | None = field(default=None, repr=False)
    pg_schema: str = "stockflow"
    snowflake_account: str | None = None
    snowflake_user: str | None = None
    snowflake_password: str | None = field(default=None, repr=False)
    snowflake_private_key_file: str | None = None
    snowflake_private_key_passphrase: str | None = field(default=None, repr=False)
    snowflake_role: str | None = None
    snowflake_warehouse: str | None = None
    snowflake_database: str | None = None
    snowflake_schema: str | None = None
    finnhub_api_key: str | None = field(default=None, repr=False)
    finnhub_symbols: tuple[str, ...] = ("AAPL", "MSFT", "TSLA", "GOOGL", "AMZN")
    finnhub_calls_per_minute: int = 60
    finnhub_api_url: str | None = None
    finnhub_ws_url: str = "wss://ws.finnhub.io"
    dashboard_backend: str = "auto"
    dashboard_address: str = "127.0.0.1"
    dashboard_port: int = 8501
    dashboard_refresh_s: float = 5.0
    dashboard_metrics_url: str | None = None
    gold: GoldConfig = field(default_factory=GoldConfig)
    origin: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def source_kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def source_path(self) -> str:
        return self.source.split(":", 1)[1] if ":" in self.source else ""

    def __post_init__(self) -> None:
        # The gold stage follows the same calendars as the bars.
        if (self.gold.calendar, self.gold.calendars) != (self.calendar, self.calendars):
            gold = replace(self.gold, calendar=self.calendar, calendars=self.calendars)
            object.__setattr__(self, "gold", gold)

    def calendar_config(self) -> CalendarConfig:
        """Which market calendar each symbol follows (names are checked
        against the calendar library here, when a flow is built)."""
        return calendar_config(self.calendar, self.calendars, self.origin)

    @property
    def is_live(self) -> bool:
        """Wall-clock watermarks: explicit, else on for unbounded live sources."""
        if self.live is not None:
            return self.live
        return self.source_kind in ("kafka", "finnhub") and not self.bounded

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        flag_names: Mapping[str, str] | None = None,
        **flags: Any,
    ) -> Settings:
        """Merge the layers. `flags` with value None are "not given".

        :arg flag_names: the command-line option a flag came from, where its
            setting has another name (``{"synthetic_ticks": "--ticks"}``);
            other flags are looked up among the running click command's
            options, so an error names the option the user typed.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        path = config_file or env.get("STOCKFLOW_CONFIG")
        gold = GoldConfig()
        if path:
            data = _read_toml(Path(path))
            for name, value in _toml_values(Path(path), data).items():
                values[name] = value
                origin[name] = f"{path} [{_option(name).toml}]"
            gold = _gold_config(Path(path), data)
        for opt in OPTIONS:
            if opt.env in env and env[opt.env] != "":
                values[opt.name] = env[opt.env]
                origin[opt.name] = f"${opt.env}"
        for name, value in flags.items():
            if value is not None:
                values[name] = value
                origin[name] = _flag_of(name, flag_names or {})
        settings = cls()
        kinds = {f.name: f.type for f in fields(cls)}
        # "indicators"/"signals" come from their TOML tables, not from OPTIONS
        converted = {}
        for name, value in values.items():
            where = origin[name]
            converted[name] = _convert(name, str(kinds[name]), value, where)
        settings = replace(settings, **converted, gold=gold, origin=origin)
        settings.validate()
        return settings

    def validate(self) -> None:
        def bad(name: str, why: str) -> UserError:
            where = self.origin.get(name, "default")
            return UserError(f"bad setting {name} (from {where}): {why}")

        kind = self.source_kind
        if kind not in ("synthetic", "file", "kafka", "finnhub") or (
            kind == "file" and not self.source_path
        ):
            raise bad("source", f"unknown source {self.source!r}; use {' | '.join(SOURCES)}")
        for sink in self.sinks:
            if sink not in SINKS:
                raise bad("sinks", f"unknown sink {sink!r}; use any of {', '.join(SINKS)}")
        if not self.sinks:
            raise bad("sinks", "at least one sink is needed")
        for name in (
            "workers",
            "shards",
            "batch_size",
            "max_rows_per_file",
            "synthetic_ticks",
            "lake_target_file_mb",
            "lake_compact_after_files",
            "lake_checkpoint_interval",
        ):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        for name in ("snapshot_interval_s", "commit_interval_s", "kafka_bounded_idle_timeout_s"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be > 0")
        if self.lake_close_after_s < 0:
            raise bad("lake_close_after_s", "must be >= 0")
        if not 0 <= self.lateness_s <= 3600:
            raise bad("lateness_s", "must be between 0 and 3600 seconds")
        if "1m" not in self.resolutions or any(r not in RESOLUTIONS for r in self.resolutions):
            raise bad(
                "resolutions",
                f"use 1m plus any of 5m, 15m, 1h, 1d (got {', '.join(self.resolutions)})",
            )
        if self.sale_conditions not in PROFILES:
            raise bad("sale_conditions", f"use one of {', '.join(PROFILES)}")
        if self.condition_codes not in DIALECTS:
            raise bad("condition_codes", f"use one of {', '.join(DIALECTS)}")
        if self.daily_session not in ("regular", "extended"):
            raise bad("daily_session", "use regular or extended")
        for item in self.calendars:
            sym, _, cal = item.partition("=")
            if not sym.strip() or not cal.strip():
                raise bad("calendars", f"{item!r} is not SYMBOL=CALENDAR")
        if self.ts_unit not in (None, "s", "ms", "us", "ns"):
            raise bad("ts_unit", "use one of s, ms, us, ns")
        if self.lake.startswith("s3://") and len(self.lake) <= len("s3://"):
            raise bad("lake", "an s3:// lake needs a bucket: s3://bucket/prefix")
        if not 1 <= self.finnhub_calls_per_minute <= 100_000:
            raise bad("finnhub_calls_per_minute", "must be between 1 and 100000")
        if not self.finnhub_symbols:
            raise bad("finnhub_symbols", "name at least one symbol")
        if self.dashboard_backend not in DASHBOARD_BACKENDS:
            raise bad("dashboard_backend", f"use one of {', '.join(DASHBOARD_BACKENDS)}")
        if not 1 <= self.dashboard_port <= 65535:
            raise bad("dashboard_port", "must be between 1 and 65535")
        if not 0.5 <= self.dashboard_refresh_s <= 3600:
            raise bad("dashboard_refresh_s", "must be between 0.5 and 3600 seconds")
        for name, schemes in (
            ("dashboard_metrics_url", ("http://", "https://")),
            ("finnhub_api_url", ("http://", "https://")),
            ("finnhub_ws_url", ("ws://", "wss://")),
            ("s3_endpoint", ("http://", "https://")),
        ):
            url = getattr(self, name)
            if url is not None and (not url.startswith(schemes) or len(url) <= len(schemes[0])):
                raise bad(name, f"{url!r} is not a URL; it must start with {' or '.join(schemes)}")


def _flag_of(name: str, flag_names: Mapping[str, str]) -> str:
    """Where setting `name` came from when it was passed to :meth:`Settings.load`
    as a flag: the option of the running click command that holds it (``--sink``
    for ``sinks``), else ``argument <name>`` (a caller in Python, or a value the
    command set itself)."""
    if name in flag_names:
        return flag_names[name]
    # A click command runs only where click is imported already; a caller in
    # Python (the bench, a notebook) is not charged ~30 ms of importing it.
    click = sys.modules.get("click")
    if click is None:
        return f"argument {name}"
    ctx = click.get_current_context(silent=True)
    for param in ctx.command.params if ctx is not None else ():
        if param.name == name and isinstance(param, click.Option):
            return max(param.opts, key=len)
    return f"argument {name}"


def _option(name: str) -> Option:
    return next(o for o in OPTIONS if o.name == name)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None


def _gold_config(path: Path, data: Mapping[str, Any]) -> GoldConfig:
    """The ``[indicators]`` and ``[signals]`` tables, validated."""
    try:
        indicators = IndicatorConfig.from_mapping(data.get("indicators", {}))
        signals = SignalConfig.from_mapping(data.get("signals", {}))
    except (IndicatorConfigError, SignalConfigError) as exc:
        raise UserError(f"config file {path}: {exc}") from None
    return GoldConfig(indicators, signals)


def _toml_values(path: Path, data: Mapping[str, Any]) -> dict[str, Any]:
    sections = (
        "run",
        "lake",
        "bars",
        "files",
        "synthetic",
        "kafka",
        "postgres",
        "snowflake",
        "finnhub",
        "dashboard",
    )
    unknown = sorted(set(data) - {*sections, "indicators", "signals"})
    if unknown:
        raise UserError(
            f"config file {path}: unknown section(s) {', '.join(unknown)}; known: "
            f"{', '.join(sections)}, indicators, signals"
        )
    by_key = {o.toml: o.name for o in OPTIONS if o.toml}
    out: dict[str, Any] = {}
    # [indicators] and [signals] are read by _gold_config.
    for section in sections:
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise UserError(f"config file {path}: [{section}] must be a table")
        for key, value in table.items():
            name = by_key.get(f"{section}.{key}")
            secret = next(
                (o for o in OPTIONS if o.secret and key in o.name and section[:5] in o.name),
                None,
            )
            if name is None and secret is not None:
                raise UserError(
                    f"config file {path}: {section}.{key} is a secret; set ${secret.env} in "
                    "the environment instead (secrets never live in config files)"
                )
            if name is None:
                known = sorted(k.split(".", 1)[1] for k in by_key if k.startswith(section + "."))
                raise UserError(
                    f"config file {path}: unknown key {section}.{key}; known: {', '.join(known)}"
                )
            out[name] = value
    return out


_BOOL = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _convert(name: str, kind: str, value: Any, where: str) -> Any:
    def fail(why: str) -> UserError:
        return UserError(f"bad setting {name} (from {where}): {why}")

    convert: Callable[[Any], Any]
    if "tuple" in kind:
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, list | tuple):
            items = [str(v).strip() for v in value]
        else:
            raise fail(f"expected a comma list, got {value!r}")
        return tuple(items)
    if "bool" in kind:
        if isinstance(value, bool):
            return value
        if str(value).lower() in _BOOL:
            return _BOOL[str(value).lower()]
        raise fail(f"expected true or false, got {value!r}")
    if "int" in kind:
        convert = int
    elif "float" in kind:
        convert = float
    else:
        return None if value is None else str(value)
    if isinstance(value, bool):
        raise fail(f"expected a number, got {value!r}")
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise fail(f"expected a number, got {value!r}") from None
