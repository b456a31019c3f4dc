"""Secrets come from the environment and appear nowhere else: not in a log
line, an error message, a lake file or a Kafka message."""

from __future__ import annotations

from connectors.serving import init_database
from dataflows.cli.kafka import replay_ticks
from dataflows.core.config import Settings
from tests.conftest import cli


def test_credentials_never_reach_logs_errors_lake_or_kafka(
    real_data, kafka_broker, pg_server, s3_server, tmp_path
):
    secrets = {
        "FINNHUB_API_KEY": "finnhub-SECRET-4f1d",
        "STOCKFLOW_SNOWFLAKE_PASSWORD": "snow-SECRET-93ab",
        "STOCKFLOW_KAFKA_SASL_PASSWORD": "sasl-SECRET-77c2",
        "AWS_SECRET_ACCESS_KEY": "aws-SECRET-5e60",
    }
    values = [*secrets.values(), pg_server.password]
    bucket = s3_server.make_bucket("secrets")
    topics = {name: kafka_broker.topic(name) for name in ("ticks", "dlq", "bars", "signals")}
    replay_ticks(
        Settings.load(env={}, kafka_brokers=kafka_broker.brokers),
        str(real_data / "ticks" / "AIG_20131007.csv.gz"),
        topic=topics["ticks"],
    )
    kafka_broker.produce(topics["ticks"], [(b"AIG", b"not json at all")])
    schema = pg_server.new_schema("secrets")
    init_database("postgres", Settings.load(env={}, pg_dsn=pg_server.dsn, pg_schema=schema))
    # the moto server accepts any key: the secret only has to be present
    env = {
        **secrets,
        "AWS_ACCESS_KEY_ID": "testing-key",
        "STOCKFLOW_KAFKA_BROKERS": kafka_broker.brokers,
        "STOCKFLOW_TOPIC_TICKS": topics["ticks"],
        "STOCKFLOW_TOPIC_DLQ": topics["dlq"],
        "STOCKFLOW_TOPIC_BARS": topics["bars"],
        "STOCKFLOW_TOPIC_SIGNALS": topics["signals"],
        "STOCKFLOW_PG_DSN": pg_server.dsn,
        "STOCKFLOW_PG_SCHEMA": schema,
        "STOCKFLOW_SNOWFLAKE_USER": "someone",
    }
    lake = f"s3://{bucket}/lake"
    outputs: list[str] = []

    ok = cli(
        "-v",
        "run",
        "--source",
        "kafka",
        "--bounded",
        "--sink",
        "parquet,postgres,kafka",
        "--lake",
        lake,
        "--s3-endpoint",
        s3_server.endpoint,
        env=env,
        timeout=180,
    )
    outputs += [ok.stdout, ok.stderr]
    assert ok.returncode == 0, ok.stderr[-2000:]
    # error paths: a wrong database password, an unreachable S3 endpoint
    bad_pg = cli(
        "run",
        "--source",
        "kafka",
        "--bounded",
        "--sink",
        "postgres",
        env={**env, "STOCKFLOW_PG_DSN": pg_server.dsn_with(password="wrong-SECRET-0d0d")},
        timeout=120,
    )
    values.append("wrong-SECRET-0d0d")
    outputs += [bad_pg.stdout, bad_pg.stderr]
    assert bad_pg.returncode == 2
    bad_s3 = cli(
        "run",
        "--source",
        "synthetic",
        "--lake",
        lake,
        "--s3-endpoint",
        "http://127.0.0.1:9",
        env=env,
        timeout=120,
    )
    outputs += [bad_s3.stdout, bad_s3.stderr]
    assert bad_s3.returncode == 2
    # logs and errors
    for text in outputs:
        for value in values:
            assert value not in text
    # every byte of every lake object
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server.endpoint, skip_instance_cache=True)
    objects = fs.find(f"{bucket}/lake")
    assert len(objects) > 5
    for key in objects:
        blob = fs.cat_file(key)
        for value in values:
            assert value.encode() not in blob, key
    # every Kafka message: key, value and headers
    seen = 0
    for topic in topics.values():
        for msg in kafka_broker.consume_all(topic):
            seen += 1
            parts = [msg.key() or b"", msg.value() or b""]
            parts += [(v or b"") for _, v in (msg.headers() or [])]
            for value in values:
                assert all(value.encode() not in p for p in parts), topic
    assert seen > 25_000
