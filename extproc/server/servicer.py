"""gRPC plumbing: the ext_proc service, one stream handler per Envoy stream."""

from __future__ import annotations

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ..config import ConfigStore
from .streams import RouterStream, UpstreamStream

#: gRPC initial metadata the rendered Envoy config sends on each ext_proc stream.
PHASE_METADATA = "x-extproc-phase"
LISTENER_METADATA = "x-extproc-listener"


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, store: ConfigStore):
        self.store = store

    async def Process(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get(PHASE_METADATA) == "upstream":
            stream = UpstreamStream(self.store)
        else:
            stream = RouterStream(self.store, metadata.get(LISTENER_METADATA, ""))
        while (request := await context.read()) is not grpc.aio.EOF:
            await context.write(stream.handle(request))
