"""extproc: an Envoy external-processing sidecar that makes Envoy an LLM gateway with provider failover."""

__version__ = "0.1.0"

import os as _os

# `extproc up` forks Envoy after gRPC has started; gRPC's fork handlers only log a warning then.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
