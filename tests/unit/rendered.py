"""Reading a rendered bootstrap in tests: where Envoy finds what it runs."""

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def hcm(bootstrap: dict, listener: int = 0) -> dict:
    return bootstrap["static_resources"]["listeners"][listener]["filter_chains"][0]["filters"][0]["typed_config"]


def upstream_filters(bootstrap: dict, cluster_name: str) -> list[dict]:
    """The upstream filters each attempt through `cluster_name` runs: the cluster's own, or else the router's."""
    cluster = next(cluster for cluster in bootstrap["static_resources"]["clusters"] if cluster["name"] == cluster_name)
    own = cluster.get("typed_extension_protocol_options", {}).get(HTTP_OPTIONS, {}).get("http_filters")
    if own is not None:
        return own
    router = next(item for item in hcm(bootstrap)["http_filters"] if item["name"] == "envoy.filters.http.router")
    return router["typed_config"]["upstream_http_filters"]


def upstream_filter_names(bootstrap: dict, cluster_name: str) -> list[str]:
    return [item["name"] for item in upstream_filters(bootstrap, cluster_name)]
