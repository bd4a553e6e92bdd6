"""gRPC plumbing: the ext_proc service, one stream handler per Envoy stream."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ..contract import HEDGE_AFTER_METADATA, LISTENER_METADATA, PHASE_METADATA, Phase
from ..processor import errors
from ..processor.cooldown import retry_after_seconds
from ..runtime import Runtime
from . import wire
from .answer_phases import HoldStream, RefusalStream, failed_answer
from .answers import Answers
from .messages import Request, Response, immediate, unchanged
from .router_stream import RouterStream
from .upstream_stream import UpstreamStream

log = logging.getLogger(__name__)

#: How long a retry waits for its previous attempt's failed-attempt entry (it is normally there already).
RETRY_WAIT_S = 0.05
#: Past a cooldown's end before a held request asks again: the provider is surely free by then.
WAIT_MARGIN_S = 0.01


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        metrics = runtime.metrics
        self._timers = {
            (level, kind): metrics.processing.labels(f"{level}_{kind}")
            for level in ("router", "upstream", "bulk")
            for kind in ("request_headers", "request_body", "response_headers", "response_body", "request_trailers", "response_trailers")
        }
        self.in_flight = {level: metrics.in_flight.labels(level) for level in ("router", "upstream", "bulk", "hold", "failed", "refused")}
        self._seen_errors: set[tuple[type, str]] = set()  # each kind of unexpected error gets its traceback logged once (`_log_once`)
        self.answers = Answers()  # router answers for request shapes seen before (event loop only: not the bulk lane's)
        self._waiting: collections.Counter[str] = collections.Counter()  # requests held per listener (`_wait`)

    async def Process(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        phase = metadata.get(PHASE_METADATA)
        if phase == Phase.FAILED:
            return await self._failed(context)
        if phase == Phase.HOLD:
            return await self._answer_phase(HoldStream(), "hold", context)
        if phase == Phase.HEDGED_HOLD:
            return await self._answer_phase(HoldStream(hedge_after_s=float(metadata.get(HEDGE_AFTER_METADATA) or 0)), "hold", context)
        if phase == Phase.REFUSED:
            return await self._answer_phase(RefusalStream(self.runtime.store.live, self.runtime.redirects), "refused", context)
        live = self.runtime.store.live  # one view of the config for the whole stream
        stream: RouterStream | UpstreamStream
        handle: Callable[[Request, str | None], Awaitable[Response]]
        if phase == Phase.UPSTREAM:
            level, stream = "upstream", UpstreamStream(live)
            handle = functools.partial(self._upstream_message, stream)
        else:
            level, stream = "router", RouterStream(live, self.runtime.health, metadata.get(LISTENER_METADATA, ""), self.answers, self.runtime.budgets, self.runtime.redirects)
            stream.may_wait = True
            handle = functools.partial(self._router_message, stream)
        in_flight = self.in_flight[level]
        in_flight.inc()
        try:
            while (request := await context.read()) is not grpc.aio.EOF:
                await context.write(await handle(request, wire.kind(request)))
                if stream.done:
                    # Close the stream ourselves (status OK: "no more processing"): Envoy
                    # sends nothing more, and no stream waits out the whole request.
                    break
        finally:
            in_flight.dec()

    async def _failed(self, context: grpc.aio.ServicerContext) -> None:
        """An attempt's failed answer: its outcome is recorded before Envoy hears back, so before it retries or answers the client."""
        in_flight = self.in_flight["failed"]
        in_flight.inc()
        try:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            try:
                answer = failed_answer(request)
                if answer is not None:
                    self.runtime.observer.answered(answer.provider, answer.status, retry_after_seconds(answer.headers))
            except Exception as exc:  # the answer goes on to Envoy whatever happened here
                self._log_once(exc, "failed", "unexpected %s taking note of a failed answer", type(exc).__name__)
            await context.write(unchanged(wire.kind(request)))
        finally:
            in_flight.dec()

    async def _answer_phase(self, stream: HoldStream | RefusalStream, level: str, context: grpc.aio.ServicerContext) -> None:
        """A stream that starts at an attempt's answer: an event stream's start, held until its first token (answers come
        several at once, in order), or a 400 read whole (answered as sent, or redirected to a fallback model, which is
        counted when the router level takes it up). Whatever happens here, the answer goes on."""
        in_flight = self.in_flight[level]
        in_flight.inc()
        try:
            while True:
                try:
                    request = await asyncio.wait_for(context.read(), stream.wait_s)
                except TimeoutError:  # a hedged stream's error waited out its hedge: it goes on as sent
                    request, responses = None, stream.release()
                if request is grpc.aio.EOF:
                    break
                if request is not None:
                    try:
                        responses = stream.handle(request)
                    except Exception as exc:  # never worth breaking an answer for: let it go on as sent
                        self._log_once(exc, level, "unexpected %s in the %s phase; the answer goes on as sent", type(exc).__name__, level)
                        responses = stream.release()
                for response in responses:
                    await context.write(response)
                if stream.done:
                    break
        finally:
            in_flight.dec()

    async def _router_message(self, stream: RouterStream, request: Request, kind: str | None) -> Response:
        response = self.step(stream, "router", kind, lambda: stream.handle(request))
        if stream.wait_s is not None:
            await self._wait(stream)
            response = self.step(stream, "router", kind, lambda: stream.handle(request))
        if stream.reused:
            self.runtime.metrics.reused_answers.inc()
        return response

    async def _wait(self, stream: RouterStream) -> None:
        """Hold a request while every provider of its chain cools, until the first is back (`on_all_cooling: wait`).

        At most the listener's `max_waiting` requests wait at once: one more is
        not held, and, asked again at once, gets the 429. Either way the stream
        decides again only once (it may not wait twice).
        """
        seconds, stream.wait_s, stream.may_wait = stream.wait_s or 0.0, None, False
        listener = stream.listener.name
        if self._waiting[listener] >= stream.listener.max_waiting:
            return
        self._waiting[listener] += 1
        try:
            await asyncio.sleep(seconds + WAIT_MARGIN_S)
        finally:
            self._waiting[listener] -= 1

    async def _upstream_message(self, stream: UpstreamStream, request: Request, kind: str | None) -> Response:
        if kind == "request_headers":
            stream.identify(request)
            # A retry: its previous attempt's outcome is applied first; one its per-try timeout started has no answer to wait for.
            if stream.number >= 2 and not stream.timeout_retry:
                await self.runtime.observer.before_retry(stream.request_id, stream.number, RETRY_WAIT_S)
        response = self.step(stream, "upstream", kind, lambda: stream.handle(request))
        self._observe(stream, kind)
        return response

    def step(self, stream: RouterStream | UpstreamStream, level: str, kind: str | None, work: Callable[[], Response]) -> Response:
        """Run the stream's decision for one message: timed, counted, and never an exception to Envoy."""
        started = time.perf_counter()
        try:
            response = work()
        except Exception as exc:  # never a traceback to Envoy or the client: a JSON 500 naming the request
            response = self._unexpected(stream, level, kind, exc)
        timer = self._timers.get((level, kind or ""))
        if timer is not None:
            timer.observe(time.perf_counter() - started)
        if stream.reply is not None and stream.reply.reason:
            self.runtime.metrics.rejected.labels(stream.reply.reason).inc()
        if isinstance(stream, RouterStream) and stream.done:
            self._count_routing(stream)
        return response

    def _count_routing(self, stream: RouterStream) -> None:
        """What a request's routing counts beyond its answer: sent with no retries (a retry budget), to a context-window fallback, or on after a refusal."""
        if stream.over_budget is not None:
            self.runtime.metrics.over_retry_budget.labels(stream.over_budget).inc()
        if stream.moved is not None:
            self.runtime.metrics.context_window_moves.labels(*stream.moved).inc()
        redirect = stream.redirect
        if redirect is not None:  # a refusal sent on: Envoy logs the refused attempt as the 307 it became, so it is counted here
            self.runtime.metrics.attempts.labels(redirect.provider, "400", redirect.reason).inc()
            self.runtime.metrics.refusal_fallbacks.labels(redirect.asked, redirect.model, redirect.reason).inc()

    def _log_once(self, exc: Exception, where: str, message: str, *args, **extra) -> None:
        """Log an unexpected error; its traceback only the first time this kind of error happens here."""
        first = (type(exc), where) not in self._seen_errors
        self._seen_errors.add((type(exc), where))
        log.error(message + ("" if first else " (traceback logged before)"), *args, exc_info=exc if first else None, **extra)

    def _unexpected(self, stream: RouterStream | UpstreamStream, level: str, kind: str | None, exc: Exception) -> pb.ProcessingResponse:
        request_id = stream.headers.get("x-request-id", "unknown")
        self._log_once(exc, f"{level} {kind}", "request %s: unexpected %s in %s %s", request_id, type(exc).__name__, level, kind, extra={"request_id": request_id})
        reply = errors.error_reply(500, f"The gateway hit an unexpected error (request id {request_id}).", "api_error", "gateway_error")
        stream.reply = errors.for_client(reply, stream.client_path)
        stream.done = True
        return immediate(stream.reply)

    def _observe(self, stream: UpstreamStream, kind: str | None) -> None:
        """What an attempt tells the observer and the metrics before Envoy goes on: a failover, a translation."""
        if stream.attempt is None:
            return
        provider = stream.attempt.provider.name
        if kind == "request_body" and stream.attempt.translation is not None and stream.reply is None:
            metrics = self.runtime.metrics
            metrics.translated.labels(provider, stream.attempt.translation.label).inc()
            for name in stream.dropped:
                metrics.dropped_fields.labels(provider, name).inc()
        refused = stream.refused_answer  # set by a response message, and the stream ends with it
        if refused is not None:
            self.runtime.observer.invalid_answer(provider, refused)
        if kind == "response_body" and stream.malformed_events:
            self.runtime.metrics.malformed_events.labels(provider).inc(stream.malformed_events)
        if kind == "request_headers" and stream.number >= 2:
            self.runtime.observer.retry_started(stream.request_id, stream.number, provider)
            model = stream.attempt.context.model
            if model is not None and (chain := stream.live.current.chain_for_model(model)) is not None and chain.policy.retry_budget is not None:
                self.runtime.budgets.retried(model)
            if stream.timeout_retry and stream.attempt.context.hedged:
                self.runtime.metrics.hedged.labels(provider).inc()


class BulkProcessor:
    """The router level for large requests, on its own socket and threads (the bulk lane).

    Envoy sends a request here when its content-length has 7 digits or more, so
    receiving and reading a large body never holds the event loop that serves
    every other request. The decisions, metrics and error handling are
    `ExternalProcessor`'s, on the same runtime.
    """

    def __init__(self, processor: ExternalProcessor):
        self.processor = processor

    def Process(self, request_iterator, context: grpc.ServicerContext) -> Iterator[Response]:
        metadata = dict(context.invocation_metadata() or ())
        runtime = self.processor.runtime
        stream = RouterStream(runtime.store.live, runtime.health, metadata.get(LISTENER_METADATA, ""), budgets=runtime.budgets, redirects=runtime.redirects)
        in_flight = self.processor.in_flight["bulk"]
        in_flight.inc()
        try:
            for request in request_iterator:
                yield self.processor.step(stream, "bulk", wire.kind(request), functools.partial(stream.handle, request))
                if stream.done:
                    return
        finally:
            in_flight.dec()
