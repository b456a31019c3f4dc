-- signals_actionable_start: the buy/sell rows of signals by time, so the
-- newest signals across symbols (the dashboard's feed) are read without the
-- holds, which are most rows, and the index stays small to maintain.
create index if not exists signals_actionable_start
    on {{schema}}.signals (start) where signal <> 'hold';
