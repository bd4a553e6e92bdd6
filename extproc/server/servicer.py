"""gRPC plumbing: the ext_proc service, one stream handler per Envoy stream."""

from __future__ import annotations

import time

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ..runtime import Runtime
from .streams import RouterStream, UpstreamStream

#: How long a retry waits for its previous attempt's failed-attempt entry (it is normally there already).
RETRY_WAIT_S = 0.05

#: gRPC initial metadata the rendered Envoy config sends on each ext_proc stream.
PHASE_METADATA = "x-extproc-phase"
LISTENER_METADATA = "x-extproc-listener"


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        metrics = runtime.metrics
        self._timers = {
            (level, kind): metrics.processing.labels(f"{level}_{kind}")
            for level in ("router", "upstream")
            for kind in ("request_headers", "request_body", "response_headers", "response_body", "request_trailers", "response_trailers")
        }
        self._in_flight = {level: metrics.in_flight.labels(level) for level in ("router", "upstream")}

    async def Process(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        live = self.runtime.store.live  # one view of the config for the whole stream
        if metadata.get(PHASE_METADATA) == "upstream":
            level, stream = "upstream", UpstreamStream(live)
        else:
            level, stream = "router", RouterStream(live, self.runtime.health, metadata.get(LISTENER_METADATA, ""))
        in_flight = self._in_flight[level]
        in_flight.inc()
        observer = self.runtime.observer
        try:
            while (request := await context.read()) is not grpc.aio.EOF:
                retry = None
                if level == "upstream" and request.HasField("request_headers"):
                    request_id, attempt = stream.identify(request)
                    if attempt >= 2:
                        retry = (request_id, attempt)
                        await observer.before_retry(request_id, attempt, RETRY_WAIT_S)
                started = time.perf_counter()
                response = stream.handle(request)
                timer = self._timers.get((level, request.WhichOneof("request")))
                if timer is not None:
                    timer.observe(time.perf_counter() - started)
                if stream.reply is not None and stream.reply.reason:
                    self.runtime.metrics.rejected.labels(stream.reply.reason).inc()
                if retry is not None and stream.attempt is not None:
                    observer.retry_started(*retry, stream.attempt.provider.name)
                await context.write(response)
                if stream.done:
                    # Close the stream ourselves (status OK: "no more processing"): Envoy
                    # sends nothing more, and no stream waits out the whole request.
                    break
        finally:
            in_flight.dec()
