-- bars_1d: 1-day OHLCV bars, one row per symbol and trading day (the lake's
-- silver/bars_1d; Arrow schema dataflows.schema.BAR_SCHEMA). start is the
-- trading day at 00:00 UTC and end the next day; session says what the bar
-- covers: 'regular' (the regular session, open and close from the official
-- auction prints where the source marks them) or 'extended' (pre-market to
-- post-market); vwap is sum(price * size) / sum(size) and trades the tick
-- count. The gold views read the regular-session bars. Written by the
-- postgres sink with idempotent upserts on (symbol, start).
create table if not exists {{schema}}.bars_1d (
    symbol  text             not null,
    start   timestamptz      not null,
    "end"   timestamptz      not null,
    open    double precision not null,
    high    double precision not null,
    low     double precision not null,
    close   double precision not null,
    volume  double precision not null,
    vwap    double precision,
    trades  bigint,
    session text,
    primary key (symbol, start)
);
