"""Product catalogues: reading them, embedding their images, the embedding table."""
