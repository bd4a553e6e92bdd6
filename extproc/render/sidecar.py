"""The sidecar as Envoy sees it: its gRPC clusters, and the ext_proc filters (router level, upstream level, answer phases) that call it."""

from __future__ import annotations

from ..contract import ATTEMPT_NAMESPACE, BODY_NAMESPACE, HOST_METADATA_ATTRIBUTE, LISTENER_METADATA, METADATA_NAMESPACE, PHASE_METADATA, Phase, message_limit
from .options import RenderOptions
from .values import CIRCUIT_BREAKERS, HTTP_OPTIONS, HTTP_OPTIONS_KEY, TLS_CONTEXT, duration, socket_address

SIDECAR_CLUSTER = "extproc_sidecar"
BULK_CLUSTER = "extproc_sidecar_bulk"
EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"


def sidecar_cluster(options: RenderOptions, body_limit: int, name: str = SIDECAR_CLUSTER, sidecar: str | None = None) -> dict:
    """The sidecar's gRPC cluster. Its connections buffer a whole message: Envoy 1.40 crashes on a message
    from the sidecar larger than the connection's buffer limit (1 MiB by default; docs/envoy-behaviour.md)."""
    sidecar = sidecar or options.sidecar
    if sidecar.startswith("unix:"):
        address = {"pipe": {"path": sidecar.removeprefix("unix:").removeprefix("//")}}
    else:
        host, _, port = sidecar.rpartition(":")
        address = socket_address(host.strip("[]") or "127.0.0.1", int(port))
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            HTTP_OPTIONS_KEY: {"@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}
        },
        "circuit_breakers": CIRCUIT_BREAKERS,
        "per_connection_buffer_limit_bytes": message_limit(body_limit),
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]},
    }
    tls = options.sidecar_tls
    if tls is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TLS_CONTEXT,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [{"certificate_chain": {"filename": tls.cert_file}, "private_key": {"filename": tls.key_file}}],
                    "validation_context": {"trusted_ca": {"filename": tls.ca_file}},
                },
            },
        }
    return cluster


def ext_proc(
    phase: Phase, options: RenderOptions, body_limit: int, listener: str | None = None, cluster: str = SIDECAR_CLUSTER, body_mode: str = "BUFFERED"
) -> dict:
    metadata = [{"key": PHASE_METADATA, "value": phase.value}]
    if listener is not None:
        metadata.append({"key": LISTENER_METADATA, "value": listener})
    config = {
        "@type": EXT_PROC,
        "grpc_service": {
            "envoy_grpc": {"cluster_name": cluster, "max_receive_message_length": message_limit(body_limit)},
            "initial_metadata": metadata,
        },
        "failure_mode_allow": False,
        "status_on_error": {"code": 503},
        "message_timeout": duration(options.message_timeout_s),
        "processing_mode": processing_mode(request_body=body_mode),
    }
    if phase == Phase.ROUTER:
        namespaces: dict = {"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}}
        config["metadata_options"] = namespaces
        # The router level drops a client's own x-envoy-* headers (x-envoy-original-path, …).
        config["mutation_rules"] = {"allow_envoy": True}
        if body_mode == "NONE":  # the model comes from Envoy; the body only when Envoy found none
            namespaces["forwarding_namespaces"] = {"untyped": [BODY_NAMESPACE]}
            config["allow_mode_override"] = True
        else:  # the headers decide nothing that the body must wait for: save a round trip
            config["send_body_without_waiting_for_header_response"] = True
    else:
        # The request's context, and where Envoy found the model (the context's span may be relative to it).
        config["metadata_options"] = {"forwarding_namespaces": {"untyped": [METADATA_NAMESPACE, BODY_NAMESPACE]}, "receiving_namespaces": {"untyped": [ATTEMPT_NAMESPACE]}}
        config["request_attributes"] = [HOST_METADATA_ATTRIBUTE]
        # The body and the answer only for a translated attempt (mode overrides); a failed answer is the failed phase's.
        config["allow_mode_override"] = True
    return {"name": "envoy.filters.http.ext_proc", "typed_config": config}


def processing_mode(request_headers: str = "SEND", request_body: str = "NONE", response_headers: str = "SKIP", response_body: str = "NONE") -> dict:
    """An ext_proc processing mode; trailers are never sent (no decision reads them)."""
    return {
        "request_header_mode": request_headers,
        "request_body_mode": request_body,
        "request_trailer_mode": "SKIP",
        "response_header_mode": response_headers,
        "response_body_mode": response_body,
        "response_trailer_mode": "SKIP",
    }


def answer_phase(phase: Phase, message_timeout_s: float, response_body: str = "NONE", **fields) -> dict:
    """An upstream ext_proc that starts at an attempt's answer (a composite delegates it on the answer's headers).

    The provider has answered: a sidecar that cannot take part lets the
    answer go on unchanged, never turns it into an error (`failure_mode_allow`).
    """
    config = {
        "@type": EXT_PROC,
        "grpc_service": {"envoy_grpc": {"cluster_name": SIDECAR_CLUSTER}, "initial_metadata": [{"key": PHASE_METADATA, "value": phase.value}]},
        "failure_mode_allow": True,
        "message_timeout": duration(message_timeout_s),
        "processing_mode": processing_mode(request_headers="SKIP", response_headers="SEND", response_body=response_body),
        **fields,
    }
    return {"name": "envoy.filters.http.ext_proc", "typed_config": config}
