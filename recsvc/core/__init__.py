"""The recommendation domain. Imports no gRPC and no Redis: storage and transport come in from
outside, through constructors."""
