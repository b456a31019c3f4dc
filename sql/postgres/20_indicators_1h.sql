-- indicators_1h: the bars_1h columns plus every technical indicator of
-- the bar (the lake's gold/indicators_1h; Arrow schema
-- dataflows.gold.INDICATOR_SCHEMA). Indicator columns are null until warmed
-- up; formulas are documented in indicators/. Written by the postgres sink
-- with idempotent upserts on (symbol, start).
create table if not exists {{schema}}.indicators_1h (
    symbol         text             not null,
    start          timestamptz      not null,
    "end"          timestamptz      not null,
    open           double precision not null,
    high           double precision not null,
    low            double precision not null,
    close          double precision not null,
    volume         double precision not null,
    vwap           double precision,
    trades         bigint,
    session        text,
    sma_5          double precision,
    sma_10         double precision,
    sma_20         double precision,
    sma_50         double precision,
    sma_200        double precision,
    ema_12         double precision,
    ema_26         double precision,
    rsi_14         double precision,
    macd           double precision,
    macd_signal    double precision,
    macd_hist      double precision,
    bb_middle      double precision,
    bb_upper       double precision,
    bb_lower       double precision,
    atr_14         double precision,
    vwap_session   double precision,
    volatility_20  double precision,
    high_52w       double precision,
    low_52w        double precision,
    primary key (symbol, start)
);
