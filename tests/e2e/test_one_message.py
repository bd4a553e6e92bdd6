"""One gRPC message per ordinary request: Envoy finds the model, the sidecar never receives the body.

Envoy's finding (`json_to_metadata` + the Lua scan in `render.body.find_model`) is
checked against the sidecar's own parser on bodies chosen to trip a scanner:
it must find exactly what `jsonbody.parse` finds, or find nothing (and the
sidecar then reads the body itself). A wrong finding would route a request to
another model, or patch bytes that are not its model.
"""

import concurrent.futures
import json

import pytest

from extproc.contract import BODY_MODEL_END_KEY, BODY_MODEL_KEY, BODY_MODEL_START_KEY, BODY_NAMESPACE
from extproc.processor.jsonbody import BodyError, parse
from extproc.render.body import find_model

from .harness import chunked, gateway_config, provider, request

GPT4 = "openai/gpt-4"
_KEYS = (BODY_MODEL_KEY, BODY_MODEL_START_KEY, BODY_MODEL_END_KEY)


def _finder(bare_envoy):
    """Envoy with only the model-finding filters; a direct response echoes what they found."""
    echoed = [{"header": {"key": f"x-found-{key}", "value": f"%DYNAMIC_METADATA({BODY_NAMESPACE}:{key})%"}} for key in _KEYS]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "finder",
        "route_config": {
            "virtual_hosts": [
                {"name": "finder", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}, "response_headers_to_add": echoed}]}
            ]
        },
        "http_filters": [*find_model(), {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    listener = {
        "name": "finder",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }
    return bare_envoy({"static_resources": {"listeners": [listener]}})


BODIES = [
    b'{"model":"x"}',
    b'{"model": "openai/gpt-4", "messages": [{"role": "user", "content": "hi"}]}',
    b' {\n "messages" :[{"role":"user","content":"\\"model\\": \\"evil\\" } { [","model":"inner"}],\n  "model" :  "openai/gpt-4" , "n":1 }\r\n',
    b'{"tools":[{"function":{"parameters":{"properties":{"model":{"type":"string"}}}}}],"model":"gpt-4"}',
    b'{"a":"\\\\","model":"b\\\\"}',
    b'{"a":"x\\\\\\"y","model":"m"}',
    '{"content":"h\u00e9llo \u2713","model":"mod\u00e8le"}'.encode(),
    b'{"n":-1.5e+3,"b":true,"c":null,"model":"m","d":[]}',
    b'{"model":"m"}  junk',
    b'{"model":"m"}\x00junk',
    b'{"model":"a","model":"b"}',
    b'{"mod\\u0065l":"x","model":"y"}',
    b'{"model":"a\\"b"}',
    b'{"model":"\\u0067pt-4"}',
    b'{"model":1}',
    b'{"model":null}',
    b'{"model":["gpt-4"]}',
    b"{}",
    b"[]",
    b'"model"',
    b'{"messages":[]}',
    b'{"model":"m","a":' + b"[" * 100 + b"]" * 100 + b"}",
    b'{"model":"m","a":' + b"[" * 200 + b"]" * 200 + b"}",
    b'{"model":"m","a":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"model":"x", "c":"\xff"}',
    b'{"model":"x", "c":"\xed\xa0\x80"}',
    b'{"model":"x",}',
    b'{"model":"x" "y":1}',
    b'{"model":"x"',
    b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(300)) + b',"model":"m"}',
    b'{"model":"' + b"m" * 20000 + b'"}',
]


def _python_finding(body: bytes) -> tuple[str, int, int] | None:
    try:
        parsed = parse(body)
    except BodyError:
        return None
    if not isinstance(parsed.model, str) or parsed.span is None or parsed.span.insert:
        return None
    return parsed.model, parsed.span.start, parsed.span.end


def test_envoy_finds_the_model_the_sidecar_would_or_nothing(bare_envoy):
    envoy = _finder(bare_envoy)
    found_some = 0
    for body in BODIES:
        answer = request(envoy.port, "POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        assert answer.status == 200
        model, start, end = (answer.headers.get(f"x-found-{key}") or None for key in _KEYS)
        if model is None:
            continue  # nothing found: the sidecar reads this body itself
        found_some += 1
        expected = _python_finding(body)
        assert expected is not None, f"Envoy found a model in a body the sidecar refuses or routes otherwise: {body[:80]!r}"
        assert (model.encode("latin-1").decode(), int(start), int(end)) == expected, body[:80]
    assert found_some >= 8, "the ordinary bodies are found by Envoy"


def test_a_json_content_type_with_charset_is_found_and_other_types_are_left_to_the_sidecar(bare_envoy):
    envoy = _finder(bare_envoy)
    body = b'{"model":"x"}'
    for content_type, found in [("application/json", "x"), ("application/json; charset=utf-8", "x"), ("text/plain", None), ("", None)]:
        answer = request(envoy.port, "POST", "/v1/chat/completions", body, {"content-type": content_type} if content_type else {})
        assert (answer.headers.get("x-found-model") or None) == found, content_type


def test_a_plain_request_costs_one_message_and_reaches_the_provider_with_its_model_patched(mocks, gateway):
    primary = mocks.start("primary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary)))
    body = b'{ "messages": [{"role": "user", "content": "hi", "model": "inner"}],\n "model" : "openai/gpt-4", "temperature": 0.25 }'

    answers = [request(gw.port, "POST", "/v1/chat/completions", body, {"content-type": "application/json"}) for _ in range(5)]

    assert [answer.status for answer in answers] == [200] * 5
    assert [received.body for received in primary.received] == [body.replace(b'"openai/gpt-4"', b'"gpt-4"')] * 5
    assert int(primary.received[0].header("content-length")) == len(body) - len("openai/")
    assert gw.metric("extproc_processing_seconds_count", phase="router_request_headers") == 5
    assert gw.metric("extproc_processing_seconds_count", phase="router_request_body") in (None, 0), "the body never crossed gRPC"


def test_a_body_past_the_small_lane_comes_with_its_headers_and_is_still_patched_by_envoy(mocks, gateway):
    """20,000 bytes or more: Envoy's JSON check would cost its worker more than the body message costs the sidecar."""
    primary = mocks.start("primary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary)))
    body = json.dumps({"model": GPT4, "messages": [{"role": "user", "content": "x" * 30_000}]}).encode()

    answer = request(gw.port, "POST", "/v1/chat/completions", body, {"content-type": "application/json"})

    assert answer.status == 200, answer.body
    assert primary.received[0].body == body.replace(b'"openai/gpt-4"', b'"gpt-4"')
    assert gw.metric("extproc_processing_seconds_count", phase="router_request_body") == 1


def test_a_chunked_upload_is_measured_once_buffered_and_takes_the_small_lane(mocks, gateway):
    """No content-length from the client: Envoy's buffer filter sets it before the lanes are picked."""
    primary = mocks.start("primary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary)))
    body = b'{"model": "openai/gpt-4", "messages": [{"role": "user", "content": "hi"}]}'
    answer = chunked(gw.port, "/v1/chat/completions", body, 20, {"content-type": "application/json"})

    assert answer.status == 200
    assert primary.received[0].body == body.replace(b'"openai/gpt-4"', b'"gpt-4"')
    assert gw.metric("extproc_processing_seconds_count", phase="router_request_body") in (None, 0)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "model_sent"),
    [
        (b'{"messages": []}', "application/json", 200, "gpt-4"),  # no model: the default provider, inserted
        (b'{"model": "openai/gpt-4"}', "text/plain", 200, "gpt-4"),  # not a JSON type to Envoy: the sidecar reads it
        (b'{"mod\\u0065l": "openai/gpt-4"}', "application/json", 200, "gpt-4"),  # an escaped key
        (b'{"model": "open\\u0061i/gpt-4"}', "application/json", 200, "gpt-4"),  # an escaped model
        (b'{"model": "openai/gpt-4", "model": "x"}', "application/json", 400, None),  # two models: refused as before
        (b'{"model": "openai/gpt-4"} x', "application/json", 400, None),
    ],
)
def test_a_body_envoy_cannot_read_goes_to_the_sidecar_and_is_decided_as_before(mocks, gateway, body, content_type, status, model_sent):
    primary = mocks.start("primary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary, default=True)))

    answer = request(gw.port, "POST", "/v1/chat/completions", body, {"content-type": content_type})

    assert answer.status == status, answer.body
    if model_sent is None:
        assert answer.json()["error"]["code"] == "invalid_json" and primary.received == []
    else:
        assert json.loads(primary.received[0].body)["model"] == model_sent
    assert gw.metric("extproc_processing_seconds_count", phase="router_request_body") == 1, "the sidecar read the body"


def test_each_retry_gets_its_own_providers_model_patched_by_envoy_and_no_body_crosses_grpc(mocks, gateway):
    """gpt-4 (429) -> gpt-4o (429) -> a gpt-4 again: the third attempt must not inherit the second's patch."""
    first, second, third = mocks.start("first", status=429), mocks.start("second", status=429), mocks.start("third")
    policy = {"retry_on": [429], "fallback_models": ["openai/gpt-4o", "local/gpt-4"]}
    gw = gateway(
        gateway_config(
            provider("first", GPT4, first, retry_policy=policy),
            provider("second", "openai/gpt-4o", second),
            provider("third", "local/gpt-4", third, provider_interface="openai"),
        )
    )
    body = b'{"messages": [{"role": "user", "content": "hi"}], "model": "openai/gpt-4", "n": 1}'

    answer = request(gw.port, "POST", "/v1/chat/completions", body, {"content-type": "application/json"})

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "third"
    received = [mock.received[0] for mock in (first, second, third)]
    assert [item.body for item in received] == [body.replace(b'"openai/gpt-4"', b'"%s"' % name) for name in (b"gpt-4", b"gpt-4o", b"gpt-4")]
    assert [int(item.header("content-length")) for item in received] == [len(item.body) for item in received]
    assert [item.header("x-envoy-attempt-count") for item in received] == ["1", "2", "3"]
    for phase in ("router_request_body", "upstream_request_body"):
        assert gw.metric("extproc_processing_seconds_count", phase=phase) in (None, 0), f"{phase}: the body stayed in Envoy"
    assert gw.metric("extproc_processing_seconds_count", phase="upstream_request_headers") == 2, "one message per retry"


def test_a_model_whose_place_moves_with_each_prompt_is_patched_in_place_on_every_attempt(mocks, gateway):
    """OpenAI's and Anthropic's SDKs write `model` after `messages`: its place differs on every request while the
    router's answer for the shape is the same (kept: `server/answers.py`). 200 such requests at once, each failing
    over to a provider of another model name: each attempt gets exactly the client's body, its own model in place."""
    first, second = mocks.start("first", status=429), mocks.start("second")
    config = gateway_config(provider("first", GPT4, first, retry_policy={"fallback_models": ["openai/gpt-4o"]}), provider("second", "openai/gpt-4o", second))
    config["cooldown"] = {"enabled": False}  # every request tries first, then fails over
    gw = gateway(config)
    bodies = [json.dumps({"messages": [{"role": "user", "content": "x" * size}], "model": GPT4, "n": 1}).encode() for size in range(200)]

    def send(body: bytes) -> int:
        return request(gw.port, "POST", "/v1/chat/completions", body, {"content-type": "application/json"}).status

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        assert set(pool.map(send, bodies)) == {200}
    for mock, model in ((first, b'"gpt-4"'), (second, b'"gpt-4o"')):
        received = sorted((item.body for item in mock.received), key=len)
        assert received == [body.replace(b'"openai/gpt-4"', model) for body in bodies], f"{mock.name}: the client's body, its model replaced in place"
        assert all(int(item.header("content-length")) == len(item.body) for item in mock.received)
    assert gw.metric("extproc_processing_seconds_count", phase="router_request_body") in (None, 0), "Envoy found every model"
    assert gw.metric("extproc_router_answers_reused_total") == len(bodies) - 1, "one decision; every later request reused its answer"
