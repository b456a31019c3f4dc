-- kpi: one row per symbol for KPI cards: the latest price and its change
-- against the previous close.
--
--   symbol          the symbol
--   as_of           start of the symbol's latest 1-minute bar
--   price           close of that bar
--   previous_close  close of the last 1-minute bar of the symbol's previous
--                   trading day (a day is the UTC calendar date of the bar
--                   start); null when the table holds no earlier day
--   change          price - previous_close
--   change_pct      100 * change / previous_close
-- START (a reserved word) and END are quoted: write them "START" and "END".
create or replace view {{schema}}.kpi as

with

bars as (

    select
        symbol,
        "START",
        close,
        to_date(convert_timezone('UTC', "START")) as trade_date

    from {{schema}}.bars_1m

),

bars_ranked_in_day as (

    select
        symbol,
        trade_date,
        "START",
        close,
        row_number() over (
            partition by symbol, trade_date
            order by "START" desc
        ) as bars_before_close

    from bars

),

daily_closes as (

    select
        symbol,
        trade_date,
        "START",
        close

    from bars_ranked_in_day
    where bars_before_close = 1

),

closes_with_previous as (

    select
        symbol,
        trade_date,
        "START",
        close,
        lag(close) over (partition by symbol order by trade_date) as previous_close,
        row_number() over (partition by symbol order by trade_date desc) as days_back

    from daily_closes

),

final as (

    select
        symbol,
        "START" as as_of,
        close as price,
        previous_close,
        close - previous_close as change,
        100 * (close - previous_close) / nullif(previous_close, 0) as change_pct

    from closes_with_previous
    where days_back = 1

)

select * from final;
