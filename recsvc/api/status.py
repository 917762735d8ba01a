"""The one table from recsvc's exceptions to gRPC status codes."""

from __future__ import annotations

import grpc

from recsvc.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotImplementedYet,
    PermissionDenied,
    RecsvcError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

STATUS_BY_ERROR: dict[type[RecsvcError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    DataError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    NotImplementedYet: grpc.StatusCode.UNIMPLEMENTED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ArtifactError: grpc.StatusCode.INTERNAL,
    ConfigError: grpc.StatusCode.INTERNAL,
}


def status_for(error: RecsvcError) -> grpc.StatusCode:
    for error_type in type(error).__mro__:
        if error_type in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[error_type]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


# What a call held at the end of a shutdown is answered (UNAVAILABLE: the client retries).
SHUTTING_DOWN = "shutting down; retry on another replica"
