"""`stockflow bench`: the performance benchmark (harness, baselines, scenarios)."""
