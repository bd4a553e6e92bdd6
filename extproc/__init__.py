"""extproc: an Envoy external-processing sidecar that makes Envoy an LLM gateway with provider failover."""

__version__ = "0.1.0"
