-- signals: one rule-based signal per symbol, bar resolution and bar (the
-- lake's gold/signals; Arrow schema dataflows.schema.SIGNAL_SCHEMA): `signal`
-- is buy | sell | hold, `score` the weighted rule score, `reasons` the rules
-- that fired (indicators/signals.py), `summary` one plain-English sentence and
-- `data_quality` flags suspect bars. Written by the snowflake sink with
-- idempotent upserts on (symbol, resolution, start).
-- START (a reserved word) and END are quoted: write them "START" and
-- "END". `reasons` is an ARRAY of rule names. Primary keys are not
-- enforced by Snowflake; the sink's MERGE on the key keeps rows unique.
create table if not exists {{schema}}.signals (
    symbol        varchar         not null,
    resolution    varchar         not null,
    "START"       timestamp_tz(6) not null,
    signal        varchar         not null,
    score         float           not null,
    reasons       array           not null,
    summary       varchar         not null,
    data_quality  boolean         not null,
    primary key (symbol, resolution, "START")
);
