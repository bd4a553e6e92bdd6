"""The decisions, without gRPC: model -> chain, attempt -> mutations, body rewrite."""

import json
import re

import pytest

from extproc.config import parse_config
from extproc.config.store import Live
from extproc.processor import router, upstream
from extproc.processor.context import RequestContext
from extproc.processor.errors import Reply
from extproc.processor.jsonbody import BodyError, Patch, model_patch, parse
from extproc.providers import CREDENTIAL_HEADERS, KINDS, upstream_path

CONFIG = parse_config(
    """
listeners: [{type: model, port: 0}]
model_providers:
  - name: a
    model: openai/gpt-4
    base_url: http://127.0.0.1:1
    access_key: key-a
    headers: {x-org: org-a, x-tenant: tenant-a}
  - name: b
    model: openai/gpt-4
    base_url: http://127.0.0.1:2/prefix/
    access_key: key-b
    headers: {x-org: org-b}
  - name: c
    model: openai/gpt-4
    base_url: http://127.0.0.1:3
    passthrough_auth: true
  - name: mini
    model: openai/gpt-4o-mini
    base_url: http://127.0.0.1:4
    default: true
""",
    "test.yaml",
    {},
)
LISTENER = CONFIG.listeners[0]


def attempt(config, provider: str, context, present):
    """The attempt to the host of `provider`'s cluster, as the upstream level sees it."""
    cluster = config.providers[provider].cluster if provider in config.providers else f"provider.{provider}.0000000000"
    return upstream.plan_attempt(Live.of(config), cluster, context, present)
CLIENT = {":method": "POST", ":path": "/v1/chat/completions?x=1", "authorization": "Bearer client", "x-tenant": "client-tenant", "x-custom": "c"}


def forward(body: bytes, headers=CLIENT) -> router.Forward:
    decision = router.on_body(CONFIG, LISTENER, headers, body)
    assert isinstance(decision, router.Forward), decision
    return decision


def patched(body: bytes, patch: Patch | None) -> bytes:
    """What Envoy's Lua filter makes of `body` with `patch` (render.body.model_patch)."""
    return body if patch is None else body[: patch.start] + patch.value + body[patch.end :]


def replace_model(body: bytes, span, model_name: str) -> bytes:
    """The body with `model_name` at `span`, as Envoy's Lua filter patches it."""
    return patched(body, model_patch(bytes(body[span.start : span.end]), span, model_name))


def retried(body: bytes, attempt: upstream.Attempt) -> bytes:
    """The body a retry carries: the router level's, with the attempt's patch applied by Envoy."""
    return patched(body, attempt.patch)


def sent(body: bytes, decision: router.Forward) -> bytes:
    """The body attempt 1 carries: the client's, with the router level's patch applied by Envoy."""
    return patched(body, decision.patch)


def apply(headers: dict, attempt: upstream.Attempt) -> dict:
    """What Envoy does with the mutations: the same map carries over to the next attempt."""
    result = dict(headers)
    for name in attempt.headers.remove:
        result.pop(name, None)
    result.update(attempt.headers.set)
    return result


def test_model_resolves_to_its_chain():
    decision = forward(b'{"model": "openai/gpt-4"}')
    assert decision.provider == "a"
    assert decision.context.path == "/v1/chat/completions?x=1"
    assert decision.context.originals == {"authorization": "Bearer client", "x-tenant": "client-tenant"}, "c passes the client's key through"


def test_client_credentials_are_not_carried_when_no_provider_of_the_chain_takes_them():
    decision = forward(b'{"model": "openai/gpt-4o-mini"}')
    assert decision.provider == "mini"
    assert decision.context.originals == {"x-tenant": "client-tenant"}


def test_a_bare_model_name_resolves_when_it_is_unambiguous():
    decision = forward(b'{"model": "gpt-4o-mini"}')
    assert (decision.provider, decision.model) == ("mini", "openai/gpt-4o-mini")
    assert decision.patch is None, "the body already names the provider's model: sent as it came"
    ambiguous = parse_config(
        "listeners: [{type: model, port: 0}]\nmodel_providers: [{model: openai/llama, base_url: 'http://a'}, {model: groq/llama, base_url: 'http://b'}]",
        "t.yaml",
        {},
    )
    assert router.on_body(ambiguous, ambiguous.listeners[0], CLIENT, b'{"model": "llama"}').status == 404


def test_upstream_path_does_not_double_an_sdk_style_v1():
    sdk_style = parse_config("listeners: [{type: model, port: 0}]\nmodel_providers: [{model: x/y, base_url: 'https://h/coding/v1'}]", "t.yaml", {})
    provider = next(iter(sdk_style.providers.values()))
    assert upstream_path(provider, "/v1/chat/completions?a=1") == "/coding/v1/chat/completions?a=1"
    assert upstream_path(provider, "/healthz") == "/coding/v1/healthz"
    assert upstream_path(CONFIG.providers["b"], "/v1/chat/completions") == "/prefix/v1/chat/completions"


def test_an_azure_deployment_gets_its_deployments_path_with_the_api_version():
    azure = parse_config(
        "listeners: [{type: model, port: 0}]\nmodel_providers:\n"
        "  - {model: azure/my-gpt-4o, base_url: 'https://res.openai.azure.com', api_version: 2024-10-21}\n"
        "  - {model: azure/v1-style, base_url: 'https://res.openai.azure.com/openai/v1'}",
        "t.yaml",
        {},
    )
    deployment, v1 = azure.providers.values()
    assert upstream_path(deployment, "/v1/chat/completions") == "/openai/deployments/my-gpt-4o/chat/completions?api-version=2024-10-21"
    assert upstream_path(deployment, "/v1/embeddings?user=u") == "/openai/deployments/my-gpt-4o/embeddings?user=u&api-version=2024-10-21"
    assert upstream_path(v1, "/v1/chat/completions") == "/openai/v1/chat/completions", "no api_version: Azure's v1 path, under base_url's"


def test_missing_model_goes_to_the_default_provider():
    assert forward(b'{"messages": []}').provider == "mini"
    assert router.route(CONFIG, LISTENER, {":method": "POST", ":path": "/v1/embeddings"}, True).provider == "mini"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("POST", "/v1/../../tenant-b/v1/chat/completions", 400, "invalid_path"),
        ("POST", "/v1/chat/completions/%2e%2E/x", 400, "invalid_path"),
        ("GET", "/../etc/passwd", 400, "invalid_path"),
        ("POST", "/v1\\chat/completions", 400, "invalid_path"),
        ("GET", "/admin", 404, "unknown_endpoint"),
        ("GET", "/v1/files/file-123", 404, "unknown_endpoint"),
        ("POST", "/v1/chat/completionsX", 404, "unknown_endpoint"),
        ("DELETE", "/v1/chat/completions", 405, "method_not_allowed"),
    ],
)
def test_requests_no_provider_may_see_are_answered_by_the_gateway(method, path, status, code):
    reply = router.screen(CONFIG, LISTENER, {":method": method, ":path": path})
    assert isinstance(reply, Reply) and reply.status == status and json.loads(reply.body)["error"]["code"] == code


def test_allowed_endpoints_pass_and_the_client_x_envoy_headers_are_dropped():
    for path in ("/v1/chat/completions?stream=true", "/v1/messages", "/v1/audio/transcriptions", "/v1/models/openai/gpt-4"):
        assert router.refusal(LISTENER, "POST", path) is None, path
    headers = {**CLIENT, "x-envoy-original-path": "/elsewhere", "x-envoy-retry-on": "5xx"}
    decision = forward(b'{"model": "openai/gpt-4"}', headers)
    assert {"x-envoy-original-path", "x-envoy-retry-on"} <= set(decision.headers.remove)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"model": "openai/gpt-4"} trailing', 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b'{"model": 4}', 400, "invalid_model"),
        (b'{"model": "a", "model": "b"}', 400, "invalid_json"),
        (b'{"model": "nope/never"}', 404, "model_not_found"),
        (b'{"model": "openai/gpt-4", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "invalid_json"),
        (b"{" + b",".join(b'"k%d": 1' % index for index in range(2000)) + b"}", 400, "invalid_json"),
    ],
    ids=["not-json", "trailing", "not-utf8", "model-not-string", "two-models", "unknown-model", "nested-5000-deep", "2000-top-level-keys"],
)
def test_bad_bodies_are_refused(body, status, code):
    decision = router.on_body(CONFIG, LISTENER, CLIENT, body)
    assert isinstance(decision, Reply) and decision.status == status
    assert json.loads(decision.body)["error"]["code"] == code


def test_declared_length_over_the_limit_is_refused_before_the_body():
    small = LISTENER.model_copy(update={"max_body_bytes": 1024})
    decision = router.screen(CONFIG, small, {**CLIENT, "content-length": "2000"})
    assert isinstance(decision, Reply) and decision.status == 413
    assert router.screen(CONFIG, small, {**CLIENT, "content-length": "100"}) is None
    assert router.route(CONFIG, small, {**CLIENT, "content-length": "100"}, False) is None, "the body decides"


def test_models_endpoint():
    listing = router.screen(CONFIG, LISTENER, {":method": "GET", ":path": "/v1/models"})
    assert [item["id"] for item in json.loads(listing.body)["data"]] == ["openai/gpt-4", "openai/gpt-4o-mini"]
    one = router.screen(CONFIG, LISTENER, {":method": "GET", ":path": "/v1/models/openai/gpt-4o-mini"})
    assert json.loads(one.body)["id"] == "openai/gpt-4o-mini"


def test_each_attempt_rebuilds_its_headers_from_the_originals():
    decision = forward(b'{"model": "openai/gpt-4"}')
    context = RequestContext.decode(decision.context.encode())
    headers = {**CLIENT, "x-arch-llm-provider": "a"}

    first = attempt(CONFIG, "a", context, headers)
    headers = apply(headers, first)
    assert headers["authorization"] == "Bearer key-a"
    assert (headers["x-org"], headers["x-tenant"], headers[":path"]) == ("org-a", "tenant-a", "/v1/chat/completions?x=1")

    second = attempt(CONFIG, "b", context, headers)
    headers = apply(headers, second)
    assert headers["authorization"] == "Bearer key-b"
    assert headers["x-org"] == "org-b"
    assert headers["x-tenant"] == "client-tenant", "the client's own value comes back once a's is gone"
    assert headers[":path"] == "/prefix/v1/chat/completions?x=1", "the prefix is applied to the original path, once"
    assert "x-arch-llm-provider" not in headers, "the routing header is the gateway's: no provider gets it"
    assert headers["x-custom"] == "c"

    third = attempt(CONFIG, "c", context, headers)
    headers = apply(headers, third)
    assert headers["authorization"] == "Bearer client", "passthrough gets the client's original, not b's key"
    assert "x-org" not in headers
    assert headers[":path"] == "/v1/chat/completions?x=1"


def test_client_credentials_are_dropped_unless_passthrough():
    context = RequestContext(path="/", originals={"authorization": "Bearer client", "x-api-key": "client-key"})
    plan = attempt(CONFIG, "mini", context, ["authorization", "x-api-key", "x-arch-forged"])
    assert "authorization" in plan.headers.remove and "x-api-key" in plan.headers.remove
    assert "x-arch-forged" in plan.headers.remove
    passthrough = attempt(CONFIG, "c", context, [])
    assert dict(passthrough.headers.set)["x-api-key"] == "client-key"


def test_every_kinds_credential_header_is_a_credential_a_client_never_passes_on():
    assert {kind.credential("k")[0] for kind in KINDS.values()} <= set(CREDENTIAL_HEADERS), "a kind's own header is kept from other providers"
    context = RequestContext(path="/", originals={"x-goog-api-key": "client-google-key", "api-key": "client-azure-key"})
    plan = attempt(CONFIG, "mini", context, ["x-goog-api-key", "api-key"])
    assert "x-goog-api-key" in plan.headers.remove and "api-key" in plan.headers.remove
    assert not {name for name, _ in plan.headers.set} & {"x-goog-api-key", "api-key"}


def test_unknown_provider_or_missing_context_is_an_error_not_a_guess():
    assert attempt(CONFIG, "gone", RequestContext(path="/"), []).status == 503
    assert attempt(CONFIG, "a", None, []).status == 500


def test_body_model_is_replaced_in_place_once_per_model_name():
    body = '{"messages":[{"content":"héllo","model":"x"}],  "model" :"openai/gpt-4" ,"n":1}'.encode()
    decision = forward(body)
    assert sent(body, decision) == '{"messages":[{"content":"héllo","model":"x"}],  "model" :"gpt-4" ,"n":1}'.encode()
    same_name = attempt(CONFIG, "b", decision.context, [])
    assert same_name.patch is None, "b serves gpt-4 too: the router's body is already right"
    other = attempt(CONFIG, "mini", decision.context, [])
    assert retried(sent(body, decision), other) == '{"messages":[{"content":"héllo","model":"x"}],  "model" :"gpt-4o-mini" ,"n":1}'.encode()


def test_default_provider_inserts_the_model_and_later_attempts_replace_it():
    decision = forward(b'{"n": 1}')
    assert sent(b'{"n": 1}', decision) == b'{"model":"gpt-4o-mini","n": 1}'
    later = attempt(CONFIG, "a", decision.context, [])
    assert retried(sent(b'{"n": 1}', decision), later) == b'{"model":"gpt-4","n": 1}'


@pytest.mark.parametrize(("body", "expected"), [(b"{}", b'{"model":"m"}'), (b' { "a": 1 }', b' { "model":"m","a": 1 }')])
def test_body_without_model_gets_one(body, expected):
    assert replace_model(body, parse(body).span, "m") == expected


def test_parse_reports_where_json_breaks():
    with pytest.raises(BodyError, match="character"):
        parse(b'{"a": [1, }')
    with pytest.raises(BodyError, match="JSON object"):
        parse(b"[]")
    assert parse(b'{"model": "m", "stream": true}').model == "m"


@pytest.mark.parametrize(("model", "header", "value"), [("openai/gpt-4", "authorization", "Bearer k"), ("anthropic/claude", "x-api-key", "k"), ("azure_openai/gpt-4", "api-key", "k"), ("portkey/gpt-4o", "x-portkey-api-key", "k")])
def test_each_provider_kind_gets_its_key_in_its_own_header(model, header, value):
    config = parse_config(f"listeners: [{{type: model, port: 0}}]\nmodel_providers: [{{name: p, model: {model}, base_url: 'http://h', access_key: k}}]", "t.yaml", {})
    context = RequestContext(path="/", originals={"authorization": "Bearer client", "x-portkey-api-key": "client"})
    plan = attempt(config, "p", context, ["authorization", "x-portkey-api-key"])
    headers = dict(plan.headers.set)
    assert headers[header] == value
    assert [name for name in ("authorization", "x-api-key", "api-key", "x-portkey-api-key") if name in headers] == [header], "one credential header, no client key"
    assert {"authorization", "x-portkey-api-key"} - {header} <= set(plan.headers.remove), "the client's credentials are dropped"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": [{"role": "user"}, , {"role": "x"}]}',
        b'{"model": "m", "messages": [{"role": "user"},]}',
        b'{"model": "m", "meta": {"a": 1,}}',
        b'{"model": "m", "meta": {"a" 1}}',
        b'{"model": "m", "messages": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
    ],
)
def test_values_under_the_top_level_are_validated_too(body):
    with pytest.raises(BodyError):
        parse(body)


def test_a_large_body_is_walked_at_its_top_level_only():
    messages = [{"role": "user", "content": "é" * 100, "model": "nested"} for _ in range(5000)]
    body = json.dumps({"messages": messages, "n": {"x": [1, 2]}, "model": "openai/gpt-4"}, ensure_ascii=False).encode()
    parsed = parse(body)
    assert parsed.model == "openai/gpt-4", "the nested 'model' keys are not the request's"
    assert replace_model(body, parsed.span, "gpt-4") == body.replace(b'"model": "openai/gpt-4"', b'"model": "gpt-4"')


@pytest.mark.parametrize(
    ("body", "model", "rewritten"),
    [
        (b' {\n  "a" : 1 ,\n  "model"\t:  "m"  \n}\n', "m", b' {\n  "a" : 1 ,\n  "model"\t:  "x"  \n}\n'),
        (b'{"mod\\u0065l": "m"}', "m", b'{"mod\\u0065l": "x"}'),
        (b'{"model": null, "a": []}', None, b'{"model": "x", "a": []}'),
        (b'{"model": ["m"]}', b'["m"]', b'{"model": "x"}'),
        (b'{"a": "caf\xc3\xa9 \\u00e9", "model": "m"}', "m", b'{"a": "caf\xc3\xa9 \\u00e9", "model": "x"}'),
    ],
    ids=["whitespace", "escaped-key", "null", "array", "value-bytes-as-sent"],
)
def test_the_model_span_is_exact_whatever_the_layout(body, model, rewritten):
    parsed = parse(body)
    assert parsed.model == model
    assert replace_model(body, parsed.span, "x") == rewritten


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"a": 1', "ends before"),
        (b'{"a": "open', "ends inside"),
        (b'{"a" 1}', "expected ':' at byte 5"),
        (b'{"a": 1 "b": 2}', "expected ',' or '}' at byte 8"),
        (b'{"a": [1, }', "invalid character at byte 10"),
        (b'{"model": "\xff"}', "the body is not valid UTF-8 (byte 11)"),
        (b'{"a": ["ok", "\xc3"], "model": "m"}', "the body is not valid UTF-8 (byte 14)"),
        (b'{"a": 1} {}', "extra data"),
    ],
)
def test_parse_says_what_is_wrong_and_where(body, message):
    with pytest.raises(BodyError, match=re.escape(message)):
        parse(body)


def _form(fields: list[tuple[str, bytes, str]], separator: str = "xYz-123") -> bytes:
    parts = []
    for name, value, extra in fields:
        parts.append(f'--{separator}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode() + value + b"\r\n")
    return b"".join(parts) + f"--{separator}--\r\n".encode()


def test_a_multipart_form_is_routed_by_its_model_field_and_passed_on_untouched():
    audio = bytes(range(256)) * 4000 + b"\r\n--xYz-12"  # binary, with a near-boundary inside
    body = _form([("file", audio, '; filename="a.wav"\r\nContent-Type: audio/wav'), ("model", b"gpt-4o-mini", ""), ("language", b"fr", "")])
    form = {**CLIENT, ":path": "/v1/audio/transcriptions", "content-type": 'multipart/form-data; boundary="xYz-123"'}
    decision = router.on_body(CONFIG, LISTENER, form, memoryview(body))
    assert isinstance(decision, router.Forward) and decision.model == "openai/gpt-4o-mini"
    assert decision.patch is None and decision.context.span is None, "the form is sent as it came, on every attempt"
    nameless = router.on_body(CONFIG, LISTENER, form, _form([("file", b"x", "")]))
    assert isinstance(nameless, router.Forward) and nameless.model == "openai/gpt-4o-mini", "no model field: the default provider"


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"no boundary here", "multipart/form-data; boundary=abc", "no part starts with its boundary"),
        (b"--abc\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4", "multipart/form-data; boundary=abc", "no closing boundary"),
        (b"--abc\r\n", "multipart/form-data", "no usable boundary"),
    ],
)
def test_a_broken_form_gets_a_clear_400(body, content_type, message):
    decision = router.on_body(CONFIG, LISTENER, {**CLIENT, "content-type": content_type}, body)
    assert isinstance(decision, Reply) and decision.status == 400
    error = json.loads(decision.body)["error"]
    assert error["code"] == "invalid_multipart" and message in error["message"]


def test_parsing_does_not_depend_on_the_wording_of_msgspecs_errors(monkeypatch):
    """A msgspec release that words its errors otherwise costs speed (Python's decoder steps in), never correctness."""
    from extproc.processor import jsonbody

    bodies = [
        b' {\n  "a" : [1, {"b": "}"}] ,\n  "model"\t:  "m"  \n}\n',
        b'{"messages": [{"model": "inner"}], "model": "openai/gpt-4", "n": 2}',
        b'{"model": null, "a": {}}',
        b'{"a": "caf\xc3\xa9", "model": "x"}',
    ]
    expected = [(parse(body).model, parse(body).span) for body in bodies]
    never = re.compile(r"(?!)")
    monkeypatch.setattr(jsonbody, "_TRAILING", never)
    monkeypatch.setattr(jsonbody, "_MALFORMED", never)
    assert [(parse(body).model, parse(body).span) for body in bodies] == expected
    for bad, says in ((b'{"a": [1, }', "at byte 10"), (b'{"a": 1 "b": 2}', "expected ',' or '}' at byte 8"), (b'{"a": 1', "ends before")):
        with pytest.raises(BodyError, match=re.escape(says)):
            parse(bad)


def test_msgspec_still_words_its_errors_as_the_fast_path_reads_them():
    """The fast path's assumption, checked against the msgspec installed: if this fails, parsing is only slower."""
    import msgspec

    from extproc.processor import jsonbody

    with pytest.raises(msgspec.DecodeError) as trailing:
        msgspec.json.Decoder(msgspec.Raw).decode(b'"m" , "n"')
    assert jsonbody._TRAILING.fullmatch(str(trailing.value))


def test_a_session_keeps_its_group_member_its_share_follows_the_weights_and_only_a_cooled_members_sessions_move():
    names, weights = ("a", "b", "c"), (2, 1, 1)
    sessions = [f"session-{index}" for index in range(4000)]
    first = {session: router.by_affinity(names, weights, session)[0] for session in sessions}
    assert all(router.by_affinity(names, weights, session)[0] == first[session] for session in sessions[:200]), "the same session, the same member"
    shares = {name: sum(1 for member in first.values() if member == name) for name in names}
    # 2:1:1 of 4,000 is 2,000:1,000:1,000; the binomial's standard deviation is ~32 and ~27.
    assert 1850 <= shares["a"] <= 2150 and 900 <= shares["b"] <= 1100 and 900 <= shares["c"] <= 1100, shares
    without_a = {session: next(name for name in router.by_affinity(names, weights, session) if name != "a") for session in sessions}
    assert all(without_a[session] == member for session, member in first.items() if member != "a"), "b's and c's sessions stay while a cools"


def test_a_session_header_picks_the_member_where_the_config_names_it():
    config = parse_config(
        """
listeners: [{type: model, port: 0}]
model_providers:
  - {name: a, model: openai/gpt-4o, base_url: 'http://a', priority: 0, routing: {affinity: {header: X-Session-Id}}}
  - {name: b, model: openai/gpt-4o, base_url: 'http://b', priority: 0}
  - {name: c, model: openai/gpt-4o, base_url: 'http://c', priority: 0}
""",
        "t.yaml",
        {},
    )
    assert config.routing["openai/gpt-4o"].affinity_header == "x-session-id"
    listener = config.listeners[0]
    body = parse(b'{"model": "openai/gpt-4o"}')
    for session in ("s1", "s2", "s3", "s4"):
        headers = {":method": "POST", ":path": "/v1/chat/completions", "x-session-id": session}
        picked = {router.resolve(config, listener, headers, body).provider for _ in range(20)}
        assert picked == {router.by_affinity(("a", "b", "c"), (1, 1, 1), session)[0]}
    anonymous = {router.resolve(config, listener, {":method": "POST", ":path": "/v1/chat/completions"}, body).provider for _ in range(60)}
    assert anonymous == {"a", "b", "c"}, "no session header: by weight, as without the key"
