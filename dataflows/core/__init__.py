"""Core of the pipeline: contracts (schemas, batch types, reject records), settings, errors, shard placement, run metrics. The only part of `dataflows` that `connectors/` may import."""
