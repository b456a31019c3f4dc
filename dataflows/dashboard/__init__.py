"""``stockflow dashboard``: the live web dashboard over Postgres or the lake.

``data`` reads (Postgres' serving views or the lake), ``figures`` draws (Plotly),
``scrape`` reads a run's metrics endpoint, ``screens`` lays out the Streamlit
app that ``app`` runs. Needs the ``dashboard`` extra (Streamlit, Plotly).
"""
