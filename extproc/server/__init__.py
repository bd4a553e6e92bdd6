"""The gRPC plumbing: Envoy's ext_proc and access-log streams translated to and from the processor's decisions.

One object per gRPC stream (`router_stream`, `upstream_stream`, `answer_phases`); `messages` reads and
writes the protobuf; `servicer` dispatches Envoy's streams to them. No decision is made here.
"""
