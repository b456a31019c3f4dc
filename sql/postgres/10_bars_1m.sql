-- bars_1m: 1-minute OHLCV bars, one row per symbol and bar (the lake's
-- silver/bars_1m; Arrow schema dataflows.schema.BAR_SCHEMA). A bar covers
-- [start, end); open/close are the first/last trade by event time, vwap is
-- sum(price * size) / sum(size) and trades the tick count. Written by the
-- postgres sink with idempotent upserts on (symbol, start).
create table if not exists {{schema}}.bars_1m (
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
