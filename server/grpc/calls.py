"""What every gRPC servicer does the same way: read a call's deadline and flags, map errors.

Unary and streaming calls share one error table (server.errors.grpc_status_for): a unary
call aborts with the status; a stream that cannot start (too many streams) aborts
likewise, and a stream message that fails gets its own error response from the
servicer, the stream going on (server.core.dispatch.Dispatcher.stream).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import grpc

from server.errors import grpc_status_for

log = logging.getLogger(__name__)
T = TypeVar("T")


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the perf_counter clock, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.perf_counter() + remaining


def metadata_flag(context: grpc.aio.ServicerContext, key: str) -> bool:
    """Whether the call's metadata sets `key` to a true value."""
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value).lower() in ("1", "true", "yes")
    return False


def code_name(value: int) -> str:
    """The name of a status code given by its number."""
    return next((c.name for c in grpc.StatusCode if c.value[0] == value), "UNKNOWN")


async def unary(work: Awaitable[T], context: grpc.aio.ServicerContext) -> T:
    """Await the work; map any error through the one table and abort the call with it."""
    try:
        return await work
    except Exception as exc:
        code, message = grpc_status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("internal error")
        await context.abort(code, message)
        raise  # unreachable: abort raises


async def streamed(
    responses: AsyncIterator[T], context: grpc.aio.ServicerContext
) -> AsyncIterator[T]:
    """Pass a stream's responses on; an error that ends the stream aborts it with its status."""
    try:
        async for response in responses:
            yield response
    except Exception as exc:
        code, message = grpc_status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("internal error in stream")
        await context.abort(code, message)
