"""The stages a tick travels: parse/validate, bars, gold (indicators and signals), and the Bytewax operators that wire them."""
