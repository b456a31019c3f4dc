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
-- START (a reserved word) and END are quoted: write them "START" and "END".
create or replace view {{schema}}.kpi as

with

bars_ranked as (

    select
        symbol,
        "START",
        close,
        session,
        row_number() over (partition by symbol order by "START" desc) as bars_back

    from {{schema}}.bars_1m

),

latest_bars as (

    select
        symbol,
        "START",
        close,
        session

    from bars_ranked
    where bars_back = 1

),

last_regular_minutes as (

    select
        bars.symbol,
        max(bars."START") as "START"

    from {{schema}}.bars_1m as bars
    inner join latest_bars
        on bars.symbol = latest_bars.symbol
        and bars."START" <= latest_bars."START"
    where coalesce(bars.session, 'regular') = 'regular'
    group by bars.symbol

),

regular_days as (

    select
        symbol,
        "START",
        "END",
        close

    from {{schema}}.bars_1d
    where coalesce(session, 'regular') = 'regular'

),

previous_days_ranked as (

    select
        latest_bars.symbol,
        regular_days.close,
        row_number() over (
            partition by latest_bars.symbol
            order by regular_days."START" desc
        ) as days_back

    from latest_bars
    left join last_regular_minutes
        on latest_bars.symbol = last_regular_minutes.symbol
    inner join regular_days
        on latest_bars.symbol = regular_days.symbol
        and case
            when latest_bars.session in ('pre', 'closed')
                then regular_days."START" <= latest_bars."START"
            else regular_days."END" <= last_regular_minutes."START"
        end

),

final as (

    select
        latest_bars.symbol,
        latest_bars."START" as as_of,
        latest_bars.close as price,
        previous_days_ranked.close as previous_close,
        latest_bars.close - previous_days_ranked.close as change,
        100 * (latest_bars.close - previous_days_ranked.close)
            / nullif(previous_days_ranked.close, 0) as change_pct

    from latest_bars
    left join previous_days_ranked
        on latest_bars.symbol = previous_days_ranked.symbol
        and previous_days_ranked.days_back = 1

)

select * from final;
