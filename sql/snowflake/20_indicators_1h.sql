-- indicators_1h: the bars_1h columns plus every technical indicator of
-- the bar (the lake's gold/indicators_1h; Arrow schema
-- dataflows.gold.INDICATOR_SCHEMA). Indicator columns are null until warmed
-- up; formulas are documented in indicators/. Written by the snowflake sink
-- with idempotent upserts on (symbol, start).
-- START (a reserved word) and END are quoted: write them "START" and
-- "END". Primary keys are not enforced by Snowflake; the sink's MERGE on
-- the key keeps rows unique.
create table if not exists {{schema}}.indicators_1h (
    symbol         varchar         not null,
    "START"        timestamp_tz(6) not null,
    "END"          timestamp_tz(6) not null,
    open           float           not null,
    high           float           not null,
    low            float           not null,
    close          float           not null,
    volume         float           not null,
    vwap           float,
    trades         bigint,
    session        varchar,
    sma_5          float,
    sma_10         float,
    sma_20         float,
    sma_50         float,
    sma_200        float,
    ema_12         float,
    ema_26         float,
    rsi_14         float,
    macd           float,
    macd_signal    float,
    macd_hist      float,
    bb_middle      float,
    bb_upper       float,
    bb_lower       float,
    atr_14         float,
    vwap_session   float,
    volatility_20  float,
    high_52w       float,
    low_52w        float,
    primary key (symbol, "START")
);
