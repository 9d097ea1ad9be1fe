"""The classify stage: the Dask graph over a store, the output lock, and the night (ingest + classify)."""
