"""Config validation: every problem names the file, the key path and the reason."""

import json
from pathlib import Path

import pytest

from extproc.cli import main
from extproc.config import ConfigError, load_config, parse_config

BASE = """
listeners:
  - type: model
    name: llm
    port: 12000
model_providers:
  - name: primary
    model: openai/gpt-4
    base_url: http://127.0.0.1:8082
    access_key: $PRIMARY_KEY
    default: true
    retry_policy:
      retry_on: [429, 503, connect-failure]
      max_attempts: 3
      per_try_timeout: 30s
      fallback_models: [openai/gpt-4o-mini]
  - name: secondary
    model: openai/gpt-4
    base_url: https://api.example.com/proxy/
  - model: openai/gpt-4o-mini
    base_url: http://127.0.0.1:8084
"""


def problems(text: str, environ=None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml", environ or {})
    assert str(caught.value).startswith("gw.yaml: invalid configuration:")
    return [str(problem) for problem in caught.value.problems]


def test_a_valid_config_resolves_chains_and_providers():
    config = parse_config(BASE, "gw.yaml", {"PRIMARY_KEY": "sk-1"})
    assert config.models["openai/gpt-4"] == ("primary", "secondary")
    assert config.chain_for_model("openai/gpt-4").providers == ("primary", "secondary", "openai/gpt-4o-mini@127.0.0.1:8084")
    assert config.chains["secondary"].providers == ("secondary", "openai/gpt-4o-mini@127.0.0.1:8084")
    assert config.chain_for_model("openai/gpt-4").num_retries == 2
    primary, secondary = config.providers["primary"], config.providers["secondary"]
    assert (primary.model_name, primary.access_key, primary.authority) == ("gpt-4", "sk-1", "127.0.0.1:8082")
    assert (secondary.tls, secondary.host, secondary.port, secondary.path_prefix, secondary.authority) == (True, "api.example.com", 443, "/proxy", "api.example.com")
    assert config.default_provider == "primary"
    policy = config.chains["primary"].policy
    assert policy.status_codes == (429, 503) and policy.conditions == ("connect-failure",)
    assert policy.per_try_timeout == 30.0


def test_a_password_in_a_url_is_not_repeated_in_the_error():
    assert not any("hunter2" in problem for problem in problems(BASE.replace("http://127.0.0.1:8082", "http://me:hunter2@host"), {"PRIMARY_KEY": "k"}))


def test_the_key_never_shows_in_repr():
    config = parse_config(BASE, "gw.yaml", {"PRIMARY_KEY": "sk-very-secret"})
    assert "sk-very-secret" not in repr(config)


def test_env_defaults_and_escapes():
    text = BASE.replace("$PRIMARY_KEY", "${PRIMARY_KEY:-fallback-key}").replace("http://127.0.0.1:8082", "${PRIMARY_URL:-http://127.0.0.1:9999}")
    config = parse_config(text, "gw.yaml", {"PRIMARY_URL": ""})
    assert config.providers["primary"].access_key == "fallback-key"
    assert config.providers["primary"].port == 9999


def test_unset_env_var_names_the_key_and_the_variable():
    assert problems(BASE) == ["model_providers[0].access_key: environment variable PRIMARY_KEY is not set (give a default with ${PRIMARY_KEY:-value})"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("port: 12000", "port: 70000"), "listeners[0].port: 70000 is out of range"),
        (("type: model", "type: prompt"), "listeners[0].type: listener type 'prompt' is not supported"),
        (("name: llm", "name: llm\n    colour: blue"), "listeners[0].colour: unknown key"),
        (("base_url: http://127.0.0.1:8082", "base_url: ftp://example.com"), "model_providers[0].base_url: 'ftp://example.com' is not an http:// or https:// URL"),
        (("base_url: http://127.0.0.1:8082", "base_url: ''"), "model_providers[0].base_url: '' is not an http:// or https:// URL"),
        (("base_url: http://127.0.0.1:8082", "base_url: http://me:hunter2@host"), "model_providers[0].base_url: must not hold credentials"),
        (("name: secondary", "name: primary"), "model_providers[1].name: duplicate provider name 'primary'"),
        (("fallback_models: [openai/gpt-4o-mini]", "fallback_models: [openai/gpt-9]"), "model_providers[0].retry_policy.fallback_models[0]: model 'openai/gpt-9' is not served"),
        (("retry_on: [429, 503, connect-failure]", "retry_on: [429, sometimes]"), "model_providers[0].retry_policy.retry_on[1]: 'sometimes' is neither a status code"),
        (("retry_on: [429, 503, connect-failure]", "retry_on: [200]"), "model_providers[0].retry_policy.retry_on[0]: status 200 is not an HTTP error status"),
        (("max_attempts: 3", "max_attempts: three"), "model_providers[0].retry_policy.max_attempts: expected an integer, got 'three'"),
        (("per_try_timeout: 30s", "per_try_timeout: soon"), "model_providers[0].retry_policy.per_try_timeout: expected a duration"),
        (("model: openai/gpt-4o-mini", "model: gpt-4o-mini"), "model_providers[2].model: 'gpt-4o-mini' must be provider/model"),
        (("default: true", "default: yes please"), "model_providers[0].default: expected true or false"),
        (("default: true", "default: true\n    ca_file: /nonexistent/ca.pem"), "model_providers[0].ca_file: '/nonexistent/ca.pem' is not a readable file"),
        (("  - name: secondary\n", "  - name: secondary\n    default: true\n"), "model_providers[1].default: only one provider can be the default"),
    ],
)
def test_each_error_names_its_key(change, expected):
    old, new = change
    assert old in BASE
    found = problems(BASE.replace(old, new, 1), {"PRIMARY_KEY": "k"})
    assert any(problem.startswith(expected) for problem in found), found


def test_a_key_of_another_provider_kind_says_whose_it_is():
    with pytest.raises(ConfigError) as caught:
        parse_config("listeners: [{type: model, port: 0}]\nmodel_providers: [{model: openai/gpt-4o, api_version: '2024-10-21'}]", "kinds.yaml", {})
    assert "model_providers[0].api_version: is only for azure_openai/…, azure/… providers, not 'openai'" in str(caught.value)


def test_all_problems_are_reported_at_once():
    text = BASE.replace("port: 12000", "port: -1").replace("base_url: http://127.0.0.1:8084", "base_url: nope")
    found = problems(text, {"PRIMARY_KEY": "k"})
    assert len(found) == 2
    assert found[0].startswith("listeners[0].port") and found[1].startswith("model_providers[2].base_url")


def test_a_model_with_two_different_retry_policies_is_refused():
    text = BASE.replace("    base_url: https://api.example.com/proxy/\n", "    base_url: https://api.example.com/proxy/\n    retry_policy: {retry_on: [500]}\n")
    found = problems(text, {"PRIMARY_KEY": "k"})
    assert found == ["model_providers[1].retry_policy: model 'openai/gpt-4' already has a different retry_policy on provider 'primary'; declare it once per model"]


def test_known_provider_kind_gets_a_default_base_url():
    config = parse_config("listeners: [{type: model, port: 1}]\nmodel_providers: [{model: openai/gpt-4o, access_key: k}]", "gw.yaml", {})
    provider = next(iter(config.providers.values()))
    assert (provider.name, provider.host, provider.port, provider.tls) == ("openai/gpt-4o@api.openai.com:443", "api.openai.com", 443, True)


def test_reserved_provider_headers_are_refused():
    text = BASE.replace("    default: true\n", "    default: true\n    headers: {x-arch-llm-provider: x, authorization: y, x-org: ok}\n")
    found = problems(text, {"PRIMARY_KEY": "k"})
    assert [problem.split(":")[0] for problem in found] == ["model_providers[0].headers.x-arch-llm-provider", "model_providers[0].headers.authorization"]


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("listeners: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: invalid configuration:\n  not valid YAML: line \d+"):
        load_config(broken)
    assert problems("") == ["the file is empty"]
    assert problems("- a list") == ["(top level): expected a mapping, got a list"]


def test_the_shipped_config_is_valid():
    config = load_config(Path(__file__).resolve().parents[2] / "config_failover.yaml", {})
    assert config.chain_for_model("openai/gpt-4").providers == ("primary", "secondary")
    assert config.listeners[0].port == 12000


def test_lenient_leaves_out_broken_entries_and_reports_them():
    text = BASE + "  - name: primary\n    model: openai/gpt-4\n    base_url: http://127.0.0.1:1\n  - name: bad\n    model: x/y\n    base_url: nope\n"
    with pytest.raises(ConfigError):
        parse_config(text, "gw.yaml", {"PRIMARY_KEY": "k"})
    config = parse_config(text, "gw.yaml", {"PRIMARY_KEY": "k"}, lenient=True)
    assert list(config.providers) == ["primary", "secondary", "openai/gpt-4o-mini@127.0.0.1:8084"]
    assert [(error.name, error.model) for error in config.provider_errors] == [("primary", "openai/gpt-4"), ("bad", "x/y")]
    assert "duplicate provider name" in config.provider_errors[0].message


def test_lenient_never_skips_an_unset_variable_or_a_listener_problem():
    with pytest.raises(ConfigError, match="PRIMARY_KEY"):
        parse_config(BASE, "gw.yaml", {}, lenient=True)
    with pytest.raises(ConfigError, match="listeners"):
        parse_config(BASE.replace("port: 12000", "port: nope"), "gw.yaml", {"PRIMARY_KEY": "k"}, lenient=True)


def test_no_providers_is_a_valid_fail_closed_config():
    config = parse_config("listeners: [{type: model, port: 1}]\nmodel_providers: []", "gw.yaml", {})
    assert not config.providers and not config.chains


@pytest.mark.parametrize(
    ("block", "environ", "expected"),
    [
        ("{random_sampling: 25, endpoint: 'http://c:4318'}", {}, ("http://c:4318", "http/protobuf", "extproc", 25.0)),
        ("{sampling: 0.1, service_name: gw, protocol: grpc, endpoint: 'http://c:4317'}", {}, ("http://c:4317", "grpc", "gw", 10.0)),
        ("{random_sampling: 25}", {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c", "OTEL_SERVICE_NAME": "svc", "OTEL_TRACES_SAMPLER_ARG": "0.5"}, ("https://c", "http/protobuf", "svc", 50.0)),
        ("{}", {}, (None, "http/protobuf", "extproc", 100.0)),
    ],
    ids=["plano-percent", "otel-ratio", "environment-wins", "off"],
)
def test_tracing_reads_the_file_then_the_standard_variables(block, environ, expected):
    config = parse_config(f"listeners: [{{type: model, port: 0}}]\nmodel_providers: [{{model: openai/gpt-4, base_url: 'http://h'}}]\ntracing: {block}", "t.yaml", environ)
    tracing = config.tracing
    assert (tracing.endpoint, tracing.protocol, tracing.service_name, tracing.sampling_percent) == expected


def test_bad_tracing_says_which_key_and_why():
    with pytest.raises(ConfigError) as error:
        parse_config(
            "listeners: [{type: model, port: 0}]\nmodel_providers: [{model: openai/gpt-4, base_url: 'http://h'}]\ntracing: {endpoint: 'collector:4318', random_sampling: 250, protocol: zipkin}",
            "t.yaml",
            {},
        )
    assert [str(problem) for problem in error.value.problems] == [
        "tracing.endpoint: expected an http:// or https:// URL with a host, got 'collector:4318'",
        "tracing.protocol: 'zipkin' is not supported (use http/protobuf or grpc)",
        "tracing.random_sampling: expected a number between 0 and 100, got 250",
    ]


def test_cooldown_reads_rate_limit_headers_and_a_redis_url_that_is_never_echoed():
    base = "listeners: [{type: model, port: 0}]\nmodel_providers: [{model: openai/gpt-4, base_url: 'http://h'}]\n"
    config = parse_config(base + "cooldown: {min_remaining_tokens: 1000, redis_url: '${REDIS_URL}'}", "t.yaml", {"REDIS_URL": "redis://:s3cret@redis:6379/0"})
    assert (config.cooldown.rate_limit_headers, config.cooldown.min_remaining_tokens, config.cooldown.redis_url) == (True, 1000, "redis://:s3cret@redis:6379/0")
    assert "s3cret" not in repr(config)
    assert parse_config(base + "cooldown: {redis_url: '${REDIS_URL:-}'}", "t.yaml", {}).cooldown.redis_url is None, "empty: this process only"
    with pytest.raises(ConfigError) as error:
        parse_config(base + "cooldown: {redis_url: 'http://:s3cret@redis', rate_limit_headers: 'yes'}", "t.yaml", {})
    assert [str(problem) for problem in error.value.problems] == [
        "cooldown.rate_limit_headers: expected true or false, got a string",
        "cooldown.redis_url: expected a redis://, rediss:// or unix:// URL",
    ]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://:s3cret@127.0.0.1:abc/0", "not a URL Redis can be reached at: Port could not be cast to integer value as 'abc'"),
        ("redis://:s3cret@redis:99999", "not a URL Redis can be reached at: Port out of range 0-65535"),
        ("redis://:s3cret@redis:6379/cache", "the database (the URL's path) must be a number, got 'cache'"),
        ("redis:///0", "expected a redis://, rediss:// or unix:// URL"),
    ],
)
def test_a_redis_url_redis_cannot_use_fails_the_check_naming_the_key_never_the_password(url, reason):
    """Found by `extproc check` and at start, not as a /readyz that never turns 200."""
    base = "listeners: [{type: model, port: 0}]\nmodel_providers: [{model: openai/gpt-4, base_url: 'http://h'}]\n"
    with pytest.raises(ConfigError) as error:
        parse_config(base + f"cooldown: {{redis_url: '{url}'}}", "t.yaml", {})
    assert [str(problem) for problem in error.value.problems] == [f"cooldown.redis_url: {reason}"]
    assert "s3cret" not in str(error.value)
    assert parse_config(base + "cooldown: {redis_url: 'unix:///run/redis.sock?db=1'}", "t.yaml", {}).cooldown.redis_url


def test_an_empty_retry_on_is_refused_not_a_silent_end_of_failover():
    with pytest.raises(ConfigError, match=r"retry_policy\.retry_on: an empty list would turn failover off"):
        parse_config("listeners: [{type: model, port: 0}]\nmodel_providers: [{model: openai/gpt-4, base_url: 'http://h', retry_policy: {retry_on: []}}]", "t.yaml", {})


def test_an_ipv6_base_url_is_bracketed_in_the_authority():
    config = parse_config("listeners: [{type: model, port: 0}]\nmodel_providers: [{model: openai/gpt-4, base_url: 'http://[::1]:8080'}]", "t.yaml", {})
    provider = next(iter(config.providers.values()))
    assert (provider.host, provider.port, provider.authority) == ("::1", 8080, "[::1]:8080")


def test_lenient_mode_keeps_a_chain_whose_fallback_entry_is_broken_and_says_what_it_lost():
    text = (
        "listeners: [{type: model, port: 0}]\nmodel_providers:\n"
        "  - {name: a, model: openai/gpt-4, base_url: 'http://a', retry_policy: {fallback_models: [openai/gpt-4o-mini]}}\n"
        "  - {name: m, model: openai/gpt-4o-mini, base_url: 'ftp://broken'}\n"
    )
    with pytest.raises(ConfigError):
        parse_config(text, "t.yaml", {})
    config = parse_config(text, "t.yaml", {}, lenient=True)
    assert config.chains["a"].providers == ("a",)
    [error] = config.provider_errors
    assert error.name == "m" and "openai/gpt-4 no longer falls back to openai/gpt-4o-mini" in error.message


PLANO = """
version: v0.1.0
listeners:
  - {type: model, name: egress_traffic, address: 0.0.0.0, port: 12000, timeout: 30s}
llm_providers:
  - model: openai/gpt-4o-mini
    access_key: $OPENAI_API_KEY
    default: true
  - model: anthropic/claude-sonnet-4
    access_key: $ANTHROPIC_API_KEY
  - model: local/qwen
    base_url: http://ollama:11434
    provider_interface: openai
    http_host: models.internal
model_aliases:
  arch.summarize.v1: {target: gpt-4o-mini}
  fast: {target: local/qwen}
overrides:
  upstream_connect_timeout: 2s
"""


def test_a_plano_config_loads_as_it_is_written():
    config = parse_config(PLANO, "plano.yaml", {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a"})
    local = config.providers["local/qwen@ollama:11434"]
    assert (local.kind, local.authority) == ("openai", "models.internal"), "provider_interface decides the credential style; http_host the Host"
    assert dict(config.aliases) == {"arch.summarize.v1": "openai/gpt-4o-mini", "fast": "local/qwen"}
    assert config.connect_timeout_s == 2.0
    from extproc.processor import router

    decision = router.resolve(config, config.listeners[0], {":path": "/v1/chat/completions"}, router.parse(b'{"model": "arch.summarize.v1"}'))
    assert decision.model == "openai/gpt-4o-mini"
    listed = json.loads(router.models_reply(config, "").body)["data"]
    assert {"id": "fast", "object": "model", "created": 0, "owned_by": "local"} in listed, "aliases are listed as models clients may ask for"


def test_plano_features_this_gateway_lacks_are_refused_by_name():
    text = PLANO + "prompt_targets: []\nrouting: {model: x}\nmodel_providers: []\n"
    text = text.replace("upstream_connect_timeout: 2s", "upstream_connect_timeout: 2s\n  optimize_context_window: true").replace("provider_interface: openai", "provider_interface: plano")
    with pytest.raises(ConfigError) as error:
        parse_config(text, "plano.yaml", {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"})
    problems = [str(problem) for problem in error.value.problems]
    assert "prompt_targets: a Plano feature this gateway does not have (it routes model traffic, with failover): remove it" in problems
    assert "routing: a Plano feature this gateway does not have (it routes model traffic, with failover): remove it" in problems
    assert "llm_providers: give model_providers or llm_providers (Plano's older name), not both" in problems
    assert any(p.startswith("overrides.optimize_context_window: a Plano override this gateway does not have") for p in problems)


ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["config_failover.yaml", "deploy/kubernetes/config.yaml"]


def test_the_published_json_schema_is_what_extproc_schema_prints(capsys):
    from extproc.cli import main

    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((ROOT / "config.schema.json").read_text()), "run `extproc schema -o config.schema.json`"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_name_the_schema_and_pass_it(name):
    import jsonschema
    import yaml

    text = (ROOT / name).read_text()
    modeline = text.splitlines()[0]
    assert modeline.startswith("# yaml-language-server: $schema=")
    assert (ROOT / name).parent.joinpath(modeline.partition("=")[2]).resolve() == ROOT / "config.schema.json"
    jsonschema.validate(yaml.safe_load(text), json.loads((ROOT / "config.schema.json").read_text()))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("port: 12000", "port: 70000"), "listeners[0].port: 70000 is out of range: must be between 0 and 65535"),
        (("name: llm", "name: llm\n    colour: blue"), "listeners[0].colour: unknown key (allowed: access_log, address, allowed_methods, allowed_paths, max_body_bytes, max_wait, max_waiting, name, on_all_cooling, port, stream_idle_timeout, timeout, type)"),
        (("max_attempts: 3", "max_attempts: 11"), "model_providers[0].retry_policy.max_attempts: 11 is out of range: must be between 1 and 10"),
        (("per_try_timeout: 30s", "per_try_timeout: 30 parsecs"), "model_providers[0].retry_policy.per_try_timeout: expected a duration like 30s, 500ms or 5m, got '30 parsecs'"),
    ],
)
def test_the_schema_and_the_loader_refuse_the_same_mistakes(change, problem):
    """An editor using the JSON Schema flags what `extproc check` refuses, at the same key."""
    import jsonschema
    import yaml

    text = BASE.replace(*change)
    assert problem in problems(text, {"PRIMARY_KEY": "k"})
    errors = list(jsonschema.Draft202012Validator(json.loads((ROOT / "config.schema.json").read_text())).iter_errors(yaml.safe_load(text)))
    assert errors, "the JSON Schema accepts what the loader refuses"


def test_one_broken_entry_hides_no_problem_of_another():
    """Each provider entry is validated on its own: a later duplicate is reported beside an earlier entry's bad URL."""
    text = BASE.replace("base_url: https://api.example.com/proxy/", "base_url: nope") + "  - name: primary\n    model: openai/gpt-4\n    base_url: http://h\n"
    assert problems(text, {"PRIMARY_KEY": "k"}) == [
        "model_providers[1].base_url: 'nope' is not an http:// or https:// URL with a host",
        "model_providers[3].name: duplicate provider name 'primary' (names must be unique; set name: on each)",
    ]


def test_a_typed_key_may_come_from_the_environment():
    config = parse_config(BASE.replace("port: 12000", "port: ${PORT}").replace("max_attempts: 3", "max_attempts: $ATTEMPTS"), "gw.yaml", {"PRIMARY_KEY": "k", "PORT": "8080", "ATTEMPTS": "2"})
    assert config.listeners[0].port == 8080 and config.chain_for_model("openai/gpt-4").num_retries == 1
    assert problems(BASE.replace("port: 12000", "port: ${PORT}"), {"PRIMARY_KEY": "k"}) == ["listeners[0].port: environment variable PORT is not set (give a default with ${PORT:-value})"]


def test_keys_that_go_wrong_together_are_refused_naming_the_key():
    body = "listeners: [{type: model, port: 12000, max_body_bytes: 1GiB}]\nmodel_providers: [{model: openai/gpt-4o}]\nmetrics: {port: 12000}\ncooldown: {default_cooldown: 90s}\n"
    with pytest.raises(ConfigError) as error:
        parse_config(body, "gw.yaml", {})
    text = str(error.value)
    assert "listeners[0].max_body_bytes: 1073741824 bytes is too large: must be less than 1GiB" in text
    with pytest.raises(ConfigError) as error:
        parse_config(body.replace("1GiB", "10MiB"), "gw.yaml", {})
    text = str(error.value)
    assert "metrics.port: 12000 is listener listener_0's port (listeners[0].port): each needs its own" in text
    assert "cooldown.default_cooldown: 90s is longer than cooldown.max_cooldown (60s)" in text


def test_a_base_url_that_is_not_http_is_refused_without_echoing_its_credentials():
    with pytest.raises(ConfigError) as error:
        parse_config("listeners: [{type: model, port: 1}]\nmodel_providers: [{model: openai/gpt-4o, base_url: 'ftp://user:SECRET@host/x'}]\n", "gw.yaml", {})
    assert "SECRET" not in str(error.value) and "ftp://…@host/x" in str(error.value)


def test_what_loads_but_does_nothing_is_a_warning_naming_the_key():
    config = parse_config(
        """
listeners: [{type: model, port: 1, timeout: 60s}]
model_providers:
  - {name: a, model: openai/gpt-4o, weight: 3, retry_policy: {per_try_timeout: 90s}}
  - {name: b, model: openai/gpt-4o}
""",
        "gw.yaml",
        {},
    )
    assert config.warnings == (
        "model_providers[0].weight: 3 has no effect without a priority (providers of a model are tried in file order; give those that share traffic the same priority)",
        "model openai/gpt-4o: retry_policy.per_try_timeout (90s) is not shorter than the listener's timeout (60s): it never ends an attempt",
    )


def test_a_duration_without_a_unit_and_a_quoted_number_are_read_as_meant_with_a_warning_naming_the_key():
    config = parse_config(
        'listeners: [{type: model, port: 1, timeout: 300}]\nmodel_providers: [{model: openai/gpt-4o, weight: "3", priority: 0, retry_policy: {per_try_timeout: $T}}]\n',
        "gw.yaml",
        {"T": "20s"},
    )
    assert config.listeners[0].timeout == 300 and next(iter(config.providers.values())).weight == 3
    assert config.warnings == (
        "listeners[0].timeout: 300 has no unit: read as 300 seconds (write 300s)",
        "model_providers[0].weight: '3' is a string: read as a number (write it unquoted)",
    ), "a value from a variable is text by nature: no warning"


@pytest.mark.parametrize(
    "content, reason",
    [("garbage", "is not a JSON key file"), ('{"type": "mystery"}', "is not a Google credentials file"), ('{"type": "service_account", "client_email": "a@b"}', "without private_key, token_uri")],
)
def test_a_vertex_key_file_that_is_not_one_is_refused_by_check(tmp_path, content, reason):
    key = tmp_path / "key.json"
    key.write_text(content)
    text = f"listeners: [{{type: model, port: 1}}]\nmodel_providers: [{{model: vertex_ai/claude-sonnet-4, vertex_project: p, vertex_location: us-east5, vertex_credentials: {key}}}]\n"
    with pytest.raises(ConfigError) as error:
        parse_config(text, "gw.yaml", {})
    assert "model_providers[0].vertex_credentials" in str(error.value) and reason in str(error.value)


def test_slow_start_is_a_duration_of_the_cooldowns_and_needs_them_on(tmp_path, capsys):
    group = """
listeners: [{type: model, port: 12000}]
model_providers:
  - {name: a, model: openai/gpt-4o, access_key: a, priority: 0}
  - {name: b, model: openai/gpt-4o, access_key: b, priority: 0}
  - {name: solo, model: openai/gpt-4o-mini, access_key: s}
"""
    assert parse_config(group + "cooldown: {slow_start: 30s}", "gw.yaml", {}).cooldown.slow_start == 30.0
    assert parse_config(group, "gw.yaml", {}).cooldown.slow_start is None, "unset: a member takes its share at once"
    assert any("cooldown.slow_start: expected a duration" in problem for problem in problems(group + "cooldown: {slow_start: soon}"))
    assert problems(group + "cooldown: {slow_start: 30s, enabled: false}") == [
        "cooldown.slow_start: has nothing to ramp with cooldown.enabled false: no provider ever comes back from a cooldown"
    ]
    path = tmp_path / "gw.yaml"
    path.write_text(group + "cooldown: {slow_start: 30s}")
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "model openai/gpt-4o: a×1 | b×1; slow start 30s" in out
    assert "model openai/gpt-4o-mini: solo\n" in out, "no group: nothing to ramp"


def test_routing_affinity_is_declared_once_per_model_and_check_prints_it(tmp_path, capsys):
    group = """
listeners: [{type: model, port: 12000}]
model_providers:
  - {name: a, model: openai/gpt-4o, access_key: a, priority: 0, routing: {affinity: {header: x-session-id}}}
  - {name: b, model: openai/gpt-4o, access_key: b, priority: 0%s}
  - {name: solo, model: openai/gpt-4o-mini, access_key: s%s}
"""
    assert parse_config(group % ("", ""), "gw.yaml", {}).routing["openai/gpt-4o"].affinity_header == "x-session-id"
    assert problems(group % (", routing: {affinity: {header: x-user}}", "")) == [
        "model_providers[1].routing: model 'openai/gpt-4o' already has a different routing on provider 'a'; declare it once per model"
    ]
    assert any("routing.affinity.header" in problem and "not a header a client can send" in problem for problem in problems(group.replace("x-session-id", "x-arch-route") % ("", "")))
    assert any("routing.strategy" in problem for problem in problems(group % ("", ", routing: {strategy: fastest}")))
    lonely = parse_config(group % ("", ", routing: {affinity: {header: x-session-id}}"), "gw.yaml", {})
    assert "model openai/gpt-4o-mini: routing has no effect: no priority group of it has more than one provider to choose among" in lonely.warnings
    path = tmp_path / "gw.yaml"
    path.write_text(group % ("", ""))
    assert main(["check", str(path)]) == 0
    assert "model openai/gpt-4o: a×1 | b×1; affinity x-session-id" in capsys.readouterr().out


def test_routing_strategy_latency_is_printed_on_grouped_models(tmp_path, capsys):
    path = tmp_path / "gw.yaml"
    path.write_text(
        """
listeners: [{type: model, port: 12000}]
model_providers:
  - {name: a, model: openai/gpt-4o, access_key: a, priority: 0, routing: {strategy: latency}}
  - {name: b, model: openai/gpt-4o, access_key: b, priority: 0}
"""
    )
    assert main(["check", str(path)]) == 0
    assert "model openai/gpt-4o: a×1 | b×1; latency" in capsys.readouterr().out


def test_waiting_for_capacity_keys_go_with_on_all_cooling_wait_and_a_wait_shorter_than_the_timeout():
    base = "model_providers: [{model: openai/gpt-4o, access_key: k}]\nlisteners: [{type: model, port: 12000, %s}]"
    listener = parse_config(base % "on_all_cooling: wait, max_wait: 3s, max_waiting: 50", "gw.yaml", {}).listeners[0]
    assert (listener.on_all_cooling, listener.max_wait, listener.max_waiting) == ("wait", 3.0, 50)
    assert problems(base % "max_wait: 3s") == ["listeners[0].max_wait: only applies with listeners[0].on_all_cooling: wait (it is 'reject')"]
    assert problems(base % "on_all_cooling: wait, max_wait: 60s, timeout: 30s") == ["listeners[0].max_wait: 60s is not shorter than listeners[0].timeout (30s)"]


def test_check_prints_a_waiting_listener(tmp_path, capsys):
    path = tmp_path / "gw.yaml"
    path.write_text("model_providers: [{model: openai/gpt-4o, access_key: k}]\nlisteners: [{type: model, name: llm, port: 12000, on_all_cooling: wait}]")
    assert main(["check", str(path)]) == 0
    assert "listener llm: 0.0.0.0:12000; on all cooling: wait 2s (at most 1000 at once)" in capsys.readouterr().out
