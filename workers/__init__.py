"""Offline pipelines: reading interaction data, training, and (later) embedding and ingestion."""
