-- candlestick: OHLC bars with their moving averages and Bollinger bands, for
-- charting; one row per resolution, symbol and bar, straight from the
-- indicators_<res> tables (an average is null until it is warmed up).
--
--   resolution                     1m | 5m | 15m | 1h | 1d
--   symbol, "START", "END"         the bar and its window [start, end)
--   open, high, low, close,        the bar's prices, volume and
--   volume, vwap                   volume-weighted average price
--   sma_20, sma_50, sma_200        simple moving averages of close
--   ema_12, ema_26                 exponential moving averages of close
--   bb_upper, bb_middle, bb_lower  Bollinger bands (20 bars, 2 population std)
--   vwap_session                   VWAP since the session start
-- START (a reserved word) and END are quoted: write them "START" and "END".
create or replace view {{schema}}.candlestick as

with

bars_of_every_resolution as (

    select
        '1m' as resolution,
        symbol, "START", "END", open, high, low, close, volume, vwap,
        sma_20, sma_50, sma_200, ema_12, ema_26, bb_upper, bb_middle, bb_lower, vwap_session
    from {{schema}}.indicators_1m

    union all

    select
        '5m' as resolution,
        symbol, "START", "END", open, high, low, close, volume, vwap,
        sma_20, sma_50, sma_200, ema_12, ema_26, bb_upper, bb_middle, bb_lower, vwap_session
    from {{schema}}.indicators_5m

    union all

    select
        '15m' as resolution,
        symbol, "START", "END", open, high, low, close, volume, vwap,
        sma_20, sma_50, sma_200, ema_12, ema_26, bb_upper, bb_middle, bb_lower, vwap_session
    from {{schema}}.indicators_15m

    union all

    select
        '1h' as resolution,
        symbol, "START", "END", open, high, low, close, volume, vwap,
        sma_20, sma_50, sma_200, ema_12, ema_26, bb_upper, bb_middle, bb_lower, vwap_session
    from {{schema}}.indicators_1h

    union all

    select
        '1d' as resolution,
        symbol, "START", "END", open, high, low, close, volume, vwap,
        sma_20, sma_50, sma_200, ema_12, ema_26, bb_upper, bb_middle, bb_lower, vwap_session
    from {{schema}}.indicators_1d

),

final as (

    select
        resolution,
        symbol,
        "START",
        "END",
        open,
        high,
        low,
        close,
        volume,
        vwap,
        sma_20,
        sma_50,
        sma_200,
        ema_12,
        ema_26,
        bb_upper,
        bb_middle,
        bb_lower,
        vwap_session

    from bars_of_every_resolution

)

select * from final;
