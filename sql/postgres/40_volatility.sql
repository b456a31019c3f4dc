-- volatility: one row per symbol for the volatility treemap, over the
-- regular session of the symbol's latest trading day (the UTC date of its
-- latest regular-session 1-minute bar), from the closes of that session's
-- 1-minute bars. Bars without a session (written before sessions) count as
-- regular.
--
--   symbol         the symbol
--   trade_date     the day the figures cover
--   bars           regular-session 1-minute bars that day
--   volume         regular-session volume that day (a natural tile size)
--   avg_price      mean close
--   price_std      sample standard deviation of the close (absolute, in
--                  price units; null with a single bar)
--   price_std_pct  price_std relative to avg_price, in percent
--
-- Walks the key (symbol, start): one probe per symbol for its newest bar,
-- then a range of that day's bars, so earlier days are never read.
create or replace view {{schema}}.volatility as

with

symbols as (

    select symbol from {{schema}}.bar_symbols

),

latest_days as (

    select
        symbols.symbol,
        date_trunc('day', latest.start, 'UTC') as day_start

    from symbols
    cross join lateral (
        select bars.start
        from {{schema}}.bars_1m as bars
        where bars.symbol = symbols.symbol
            and coalesce(bars.session, 'regular') = 'regular'
        order by bars.start desc
        limit 1
    ) as latest

),

latest_day_figures as (

    select
        latest_days.symbol,
        (latest_days.day_start at time zone 'UTC')::date as trade_date,
        day.bars,
        day.volume,
        day.avg_price,
        day.price_std

    from latest_days
    cross join lateral (
        select
            count(*) as bars,
            sum(day_bars.volume) as volume,
            avg(day_bars.close) as avg_price,
            stddev_samp(day_bars.close) as price_std
        from {{schema}}.bars_1m as day_bars
        where day_bars.symbol = latest_days.symbol
            and day_bars.start >= latest_days.day_start
            and day_bars.start < latest_days.day_start + interval '1 day'
            and coalesce(day_bars.session, 'regular') = 'regular'
    ) as day

),

final as (

    select
        symbol,
        trade_date,
        bars,
        volume,
        avg_price,
        price_std,
        100 * price_std / nullif(avg_price, 0) as price_std_pct

    from latest_day_figures

)

select * from final;
