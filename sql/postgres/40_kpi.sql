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
--
-- Every step walks the key (symbol, start): the symbols one index probe
-- each, then per symbol its newest bar and the newest bar before that bar's
-- day, so the view reads two bars per symbol however long the history is.
create or replace view {{schema}}.kpi as

with recursive

symbols as (

    select min(symbol) as symbol
    from {{schema}}.bars_1m

    union all

    select (
        select min(later.symbol)
        from {{schema}}.bars_1m as later
        where later.symbol > symbols.symbol
    )
    from symbols
    where symbols.symbol is not null

),

latest_bars as (

    select
        symbols.symbol,
        latest.start,
        latest.close,
        date_trunc('day', latest.start, 'UTC') as day_start

    from symbols
    cross join lateral (
        select bars.start, bars.close
        from {{schema}}.bars_1m as bars
        where bars.symbol = symbols.symbol
        order by bars.start desc
        limit 1
    ) as latest
    where symbols.symbol is not null

),

closes_with_previous as (

    select
        latest_bars.symbol,
        latest_bars.start,
        latest_bars.close,
        previous.close as previous_close

    from latest_bars
    left join lateral (
        select bars.close
        from {{schema}}.bars_1m as bars
        where bars.symbol = latest_bars.symbol
            and bars.start < latest_bars.day_start
        order by bars.start desc
        limit 1
    ) as previous on true

),

final as (

    select
        symbol,
        start as as_of,
        close as price,
        previous_close,
        close - previous_close as change,
        100 * (close - previous_close) / nullif(previous_close, 0) as change_pct

    from closes_with_previous

)

select * from final;
