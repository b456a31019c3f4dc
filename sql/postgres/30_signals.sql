-- signals: one rule-based signal per symbol, bar resolution and bar (the
-- lake's gold/signals; Arrow schema dataflows.schema.SIGNAL_SCHEMA): `signal`
-- is buy | sell | hold, `score` the weighted rule score, `reasons` the rules
-- that fired (indicators/signals.py), `summary` one plain-English sentence and
-- `data_quality` flags suspect bars. Written by the postgres sink with
-- idempotent upserts on (symbol, resolution, start).
create table if not exists {{schema}}.signals (
    symbol        text             not null,
    resolution    text             not null,
    start         timestamptz      not null,
    signal        text             not null,
    score         double precision not null,
    reasons       text[]           not null,
    summary       text             not null,
    data_quality  boolean          not null,
    primary key (symbol, resolution, start)
);
