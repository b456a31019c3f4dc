"""Tick parsing and validation: raw input in, canonical ticks and rejects out.

Two kinds of input travel this one road, split along its seams:

* :mod:`.files`: rows of a tick file (CSV, CSV.GZ or Parquet) as Arrow columns;
* :mod:`.messages` (and its vectorised road :mod:`.fast_json`): Finnhub
  websocket trade messages and canonical JSON ticks, as raw bytes.

Both end in :mod:`.validation`, which applies every domain check vectorised
over a whole batch and splits it into a TICK_SCHEMA table and a REJECT_SCHEMA
table. Nothing is dropped without a record: every input row is either a tick
or a reject (Finnhub ``ping`` messages are not ticks and are ignored by
contract).
"""

from dataflows.stages.parse.files import parse_columns, unreadable_rows
from dataflows.stages.parse.messages import parse_messages
from dataflows.stages.parse.validation import MAX_MESSAGE_BYTES, single_symbol

__all__ = [
    "MAX_MESSAGE_BYTES",
    "parse_columns",
    "parse_messages",
    "single_symbol",
    "unreadable_rows",
]
