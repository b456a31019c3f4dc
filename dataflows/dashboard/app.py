"""The Streamlit script that ``stockflow dashboard`` serves.

Streamlit runs this file for every page view and refresh; the screens live in
:mod:`dataflows.dashboard.screens`. Run it by hand with
``streamlit run dataflows/dashboard/app.py`` (configured from the environment,
like every stockflow process).
"""

from dataflows.dashboard.screens import main

main()
