-- bars_1m: 1-minute OHLCV bars, one row per symbol and bar (the lake's
-- silver/bars_1m; Arrow schema dataflows.schema.BAR_SCHEMA). A bar covers
-- [start, end); open/close are the first/last trade by event time, vwap is
-- sum(price * size) / sum(size) and trades the tick count. Written by the
-- snowflake sink with idempotent upserts on (symbol, start).
-- START (a reserved word) and END are quoted: write them "START" and
-- "END". Primary keys are not enforced by Snowflake; the sink's MERGE on
-- the key keeps rows unique.
create table if not exists {{schema}}.bars_1m (
    symbol   varchar         not null,
    "START"  timestamp_tz(6) not null,
    "END"    timestamp_tz(6) not null,
    open     float           not null,
    high     float           not null,
    low      float           not null,
    close    float           not null,
    volume   float           not null,
    vwap     float,
    trades   bigint,
    session  varchar,
    primary key (symbol, "START")
);
