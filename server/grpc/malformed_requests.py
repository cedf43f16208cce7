"""Requests that are not valid protobuf get INVALID_ARGUMENT, not UNKNOWN or a silent end.

Without this, grpc.aio answers bytes its deserializer cannot parse with UNKNOWN and the
parser's exception text (unary calls), or ends a stream with OK, dropping the malformed
message and every message after it without a word (streams). The interceptor wraps each
handler's deserializer so a parse failure becomes a marker the handler turns into
INVALID_ARGUMENT naming the message type; a stream first answers the messages before it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc


class _Malformed:
    """Stands in for a request that could not be parsed."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    kind = name.full_name if name is not None else "the request message"

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser raises
            return _Malformed(f"request: not a valid {kind} ({type(exc).__name__})")

    return parse


async def _checked(requests: AsyncIterator[Any], problems: list[str]) -> AsyncIterator[Any]:
    """The requests up to the first malformed one, whose problem goes into `problems`."""
    async for request in requests:
        if isinstance(request, _Malformed):
            problems.append(request.problem)
            return
        yield request


def _guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, answering a malformed request with INVALID_ARGUMENT."""
    codecs = {
        "request_deserializer": _safe(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    if handler.unary_unary or handler.unary_stream:
        single: Callable[..., Any] = handler.unary_unary or handler.unary_stream

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                await context.abort(invalid, request.problem)
            return await single(request, context)

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                await context.abort(invalid, request.problem)
            async for response in single(request, context):
                yield response

        async def unary_stream_writer(request: Any, context: grpc.aio.ServicerContext) -> None:
            # A handler that answers with `await context.write(...)` (grpc.health.v1 Watch)
            # is a coroutine, not an async generator: await it instead of iterating.
            if isinstance(request, _Malformed):
                await context.abort(invalid, request.problem)
            await single(request, context)

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary_unary, **codecs)
        if not inspect.isasyncgenfunction(single):
            return grpc.unary_stream_rpc_method_handler(unary_stream_writer, **codecs)
        return grpc.unary_stream_rpc_method_handler(unary_stream, **codecs)

    streaming: Callable[..., Any] = handler.stream_unary or handler.stream_stream

    async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        problems: list[str] = []
        response = await streaming(_checked(requests, problems), context)
        if problems:
            await context.abort(invalid, problems[0])
        return response

    async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        problems: list[str] = []
        async for response in streaming(_checked(requests, problems), context):
            yield response
        if problems:  # the messages before the malformed one have their answers
            await context.abort(invalid, problems[0])

    async def stream_stream_writer(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        problems: list[str] = []
        await streaming(_checked(requests, problems), context)  # answers with context.write
        if problems:
            await context.abort(invalid, problems[0])

    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(stream_unary, **codecs)
    if not inspect.isasyncgenfunction(streaming):
        return grpc.stream_stream_rpc_method_handler(stream_stream_writer, **codecs)
    return grpc.stream_stream_rpc_method_handler(stream_stream, **codecs)


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Gives every handler a deserializer that cannot fail the call with UNKNOWN."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the handler the call would get."""
        handler = await continuation(handler_call_details)
        return handler if handler is None else _guarded(handler)
