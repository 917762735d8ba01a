"""The offline data layer: interaction files, the Parquet interaction store, demo data."""
