-- bar_symbols: every symbol that has 1-minute bars, one row each.
--
--   symbol  the symbol
--
-- A loose index scan over the key of bars_1m (symbol, start): one index probe
-- per symbol instead of reading every bar, so the views built on it (kpi,
-- volatility) and the dashboard's per-symbol reads cost a few probes per
-- symbol however long the history is.
create or replace view {{schema}}.bar_symbols as

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

)

select symbol from symbols where symbol is not null;
