"""The gRPC transport: thin servicers, proto <-> domain conversion, error mapping."""
