-- kpi: one row per symbol for KPI cards: the latest price and its change
-- against the previous close.
--
--   symbol          the symbol
--   as_of           start of the symbol's latest 1-minute bar
--   price           close of that bar
--   previous_close  the regular-session close (bars_1d, session 'regular')
--                   of the last trading day before the one the latest bar
--                   belongs to; null when the table holds none. A daily bar
--                   counts once its day (start .. "end") lies wholly before
--                   the symbol's latest regular-session minute -- for a
--                   latest bar in the pre-market or a closed session: once it
--                   started before that bar -- so a post-market bar after
--                   00:00 UTC (winter evenings in New York) still compares
--                   with the day before, not with its own day's close.
--                   Bars without a session (written before sessions) count
--                   as regular
--   change          price - previous_close
--   change_pct      100 * change / previous_close
--
-- Every step walks the key (symbol, start): the symbols (bar_symbols) one index probe
-- each, then per symbol its newest bar, its newest regular minute and the
-- daily bar before it, so the view reads a few bars per symbol however long
-- the history is.
create or replace view {{schema}}.kpi as

with

symbols as (

    select symbol from {{schema}}.bar_symbols

),

latest_bars as (

    select
        symbols.symbol,
        latest.start,
        latest.close,
        latest.session

    from symbols
    cross join lateral (
        select bars.start, bars.close, bars.session
        from {{schema}}.bars_1m as bars
        where bars.symbol = symbols.symbol
        order by bars.start desc
        limit 1
    ) as latest

),

last_regular_minutes as (

    select
        latest_bars.symbol,
        regular.start

    from latest_bars
    cross join lateral (
        select bars.start
        from {{schema}}.bars_1m as bars
        where bars.symbol = latest_bars.symbol
            and bars.start <= latest_bars.start
            and coalesce(bars.session, 'regular') = 'regular'
        order by bars.start desc
        limit 1
    ) as regular

),

previous_days as (

    select
        latest_bars.symbol,
        previous.close

    from latest_bars
    left join last_regular_minutes
        on latest_bars.symbol = last_regular_minutes.symbol
    cross join lateral (
        select days.close
        from {{schema}}.bars_1d as days
        where days.symbol = latest_bars.symbol
            and coalesce(days.session, 'regular') = 'regular'
            and case
                when latest_bars.session in ('pre', 'closed')
                    then days.start <= latest_bars.start
                else days."end" <= last_regular_minutes.start
            end
        order by days.start desc
        limit 1
    ) as previous

),

final as (

    select
        latest_bars.symbol,
        latest_bars.start as as_of,
        latest_bars.close as price,
        previous_days.close as previous_close,
        latest_bars.close - previous_days.close as change,
        100 * (latest_bars.close - previous_days.close)
            / nullif(previous_days.close, 0) as change_pct

    from latest_bars
    left join previous_days
        on latest_bars.symbol = previous_days.symbol

)

select * from final;
