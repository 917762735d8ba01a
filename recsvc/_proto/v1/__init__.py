"""Generated gRPC code. Do not edit."""
