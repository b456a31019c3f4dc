"""`stockflow report`: a static HTML page of charts over the lake."""
