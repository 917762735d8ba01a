"""The worker processes of the learning loop: ``ingest`` (event log -> interaction store),
``train`` (interaction store -> a new model version) and ``embed`` (catalogue images -> the
embedding table). Each module has a ``build_*_round`` composition root; ``loop.run_rounds``
runs a round until SIGTERM. The library they use lives in the ``recsvc`` package."""
