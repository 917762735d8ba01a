"""Training: the pipeline that turns interactions (and image embeddings) into a published,
checksummed model version."""
