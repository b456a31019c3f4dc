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
-- START (a reserved word) and END are quoted: write them "START" and "END".
create or replace view {{schema}}.volatility as

with

bars as (

    select
        symbol,
        close,
        volume,
        to_date(convert_timezone('UTC', "START")) as trade_date

    from {{schema}}.bars_1m
    where coalesce(session, 'regular') = 'regular'

),

latest_days as (

    select
        symbol,
        max(trade_date) as trade_date

    from bars
    group by symbol

),

latest_day_bars as (

    select
        bars.symbol,
        bars.trade_date,
        bars.close,
        bars.volume

    from bars
    inner join latest_days
        on bars.symbol = latest_days.symbol
        and bars.trade_date = latest_days.trade_date

),

final as (

    select
        symbol,
        trade_date,
        count(*) as bars,
        sum(volume) as volume,
        avg(close) as avg_price,
        stddev_samp(close) as price_std,
        100 * stddev_samp(close) / nullif(avg(close), 0) as price_std_pct

    from latest_day_bars
    group by symbol, trade_date

)

select * from final;
