-- market_summary: one row per trading day for the market overview, from the
-- regular-session daily bars (bars_1d, session 'regular'; bars without a
-- session, written before sessions, count as regular). A symbol's day change
-- is its regular-session close against the one of its previous trading day
-- in the table; a symbol's first day in the table has no change and counts
-- in `symbols` only. A day appears once its daily bars are written (15
-- minutes after the close).
--
--   trade_date              the trading day (the daily bar's start, 00:00 UTC)
--   symbols                 symbols with a regular-session bar that day
--   advancers               symbols whose day change is > 0
--   decliners               symbols whose day change is < 0
--   unchanged               symbols whose day change is 0
--   top_gainer              symbol with the largest % gain (ties: first
--   top_gainer_change_pct     symbol alphabetically), and that gain;
--                             null when nothing advanced
--   top_loser               symbol with the largest % loss, and that loss;
--   top_loser_change_pct      null when nothing declined
--   golden_crosses          signals of regular-session 1-minute bars that day
--                             (the bar's UTC date) whose reasons include
--                             golden_cross (SMA 50 crossed above SMA 200)
--   death_crosses           the same with death_cross (SMA 50 below SMA 200)
-- START (a reserved word) and END are quoted: write them "START" and "END".
create or replace view {{schema}}.market_summary as

with

daily_closes as (

    select
        symbol,
        to_date(convert_timezone('UTC', "START")) as trade_date,
        close,
        lag(close) over (partition by symbol order by "START") as previous_close

    from {{schema}}.bars_1d
    where coalesce(session, 'regular') = 'regular'

),

day_changes as (

    select
        symbol,
        trade_date,
        close - previous_close as change,
        100 * (close - previous_close) / nullif(previous_close, 0) as change_pct

    from daily_closes

),

breadth as (

    select
        trade_date,
        count(*) as symbols,
        sum(case when change > 0 then 1 else 0 end) as advancers,
        sum(case when change < 0 then 1 else 0 end) as decliners,
        sum(case when change = 0 then 1 else 0 end) as unchanged

    from day_changes
    group by trade_date

),

gainers_ranked as (

    select
        trade_date,
        symbol,
        change_pct,
        row_number() over (
            partition by trade_date
            order by change_pct desc, symbol
        ) as gainer_rank

    from day_changes
    where change > 0

),

losers_ranked as (

    select
        trade_date,
        symbol,
        change_pct,
        row_number() over (
            partition by trade_date
            order by change_pct asc, symbol
        ) as loser_rank

    from day_changes
    where change < 0

),

signal_reasons as (

    select
        to_date(convert_timezone('UTC', signals."START")) as trade_date,
        reason.value::varchar as reason

    from {{schema}}.signals as signals
    inner join {{schema}}.bars_1m as bars
        on signals.symbol = bars.symbol
        and signals."START" = bars."START",
        lateral flatten(input => signals.reasons) as reason
    where signals.resolution = '1m'
        and coalesce(bars.session, 'regular') = 'regular'

),

crosses as (

    select
        trade_date,
        sum(case when reason = 'golden_cross' then 1 else 0 end) as golden_crosses,
        sum(case when reason = 'death_cross' then 1 else 0 end) as death_crosses

    from signal_reasons
    group by trade_date

),

final as (

    select
        breadth.trade_date,
        breadth.symbols,
        breadth.advancers,
        breadth.decliners,
        breadth.unchanged,
        gainers_ranked.symbol as top_gainer,
        gainers_ranked.change_pct as top_gainer_change_pct,
        losers_ranked.symbol as top_loser,
        losers_ranked.change_pct as top_loser_change_pct,
        coalesce(crosses.golden_crosses, 0) as golden_crosses,
        coalesce(crosses.death_crosses, 0) as death_crosses

    from breadth
    left join gainers_ranked
        on breadth.trade_date = gainers_ranked.trade_date
        and gainers_ranked.gainer_rank = 1
    left join losers_ranked
        on breadth.trade_date = losers_ranked.trade_date
        and losers_ranked.loser_rank = 1
    left join crosses
        on breadth.trade_date = crosses.trade_date

)

select * from final;
