-- bars_1d: 1-day OHLCV bars, one row per symbol and trading day (the lake's
-- silver/bars_1d; Arrow schema dataflows.schema.BAR_SCHEMA). start is the
-- trading day at 00:00 UTC and end the next day; session says what the bar
-- covers: 'regular' (the regular session, open and close from the official
-- auction prints where the source marks them) or 'extended' (pre-market to
-- post-market); vwap is sum(price * size) / sum(size) and trades the tick
-- count. The gold views read the regular-session bars. Written by the
-- snowflake sink with idempotent upserts on (symbol, start).
-- START (a reserved word) and END are quoted: write them "START" and
-- "END". Primary keys are not enforced by Snowflake; the sink's MERGE on
-- the key keeps rows unique.
create table if not exists {{schema}}.bars_1d (
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
