"""The gRPC plumbing: Envoy's ext_proc and access-log streams translated to and from the processor's decisions."""
