"""Storage backends for the domain's interfaces (recsvc.core.state): Redis, and in-process for
the embedded mode."""
