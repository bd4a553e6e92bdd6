"""Provider kinds, as pure functions: paths, wire model names, the Vertex body, token renewal times, config keys."""

import base64
import datetime
import json
import time

import pytest

from extproc import providers, translator
from extproc.config import ConfigError, parse_config
from extproc.mock.bedrock import BedrockState
from extproc.providers import bedrock, upstream_path, vertex


def config(entries: str):
    return parse_config(f"listeners: [{{type: model, port: 0}}]\nmodel_providers:\n{entries}", "t.yaml", {})


VERTEX = config(
    "  - {name: claude, model: vertex_ai/claude-sonnet-4@20250514, vertex_project: p1, vertex_location: us-east5}\n"
    "  - {name: gemini, model: vertex_ai/gemini-2.5-flash, vertex_project: p1, vertex_location: global}\n"
    "  - {name: llama, model: vertex_ai/meta/llama-4, vertex_project: p1, vertex_location: us-east5}"
)


def test_vertex_defaults_its_base_url_from_the_location():
    claude, gemini, _ = VERTEX.providers.values()
    assert (claude.host, claude.tls) == ("us-east5-aiplatform.googleapis.com", True)
    assert gemini.host == "aiplatform.googleapis.com", "the global location has no region prefix"


def test_claude_on_vertex_speaks_anthropics_api_on_rawpredict_and_others_openais_endpoint():
    claude, gemini, llama = VERTEX.providers.values()
    assert translator.provider_api(claude) == translator.ANTHROPIC_MESSAGES and translator.provider_api(gemini) == translator.OPENAI_CHAT
    assert upstream_path(claude, "/v1/messages") == "/v1/projects/p1/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict"
    assert upstream_path(gemini, "/v1/chat/completions") == "/v1/projects/p1/locations/global/endpoints/openapi/chat/completions"
    assert (gemini.model_name, llama.model_name, claude.model_name) == ("google/gemini-2.5-flash", "meta/llama-4", "claude-sonnet-4@20250514")


def test_claude_on_vertex_gets_its_body_without_model_and_its_stream_path():
    claude = VERTEX.providers["claude"]
    body, path = vertex.claude_body(claude, {"model": "x", "stream": True, "max_tokens": 5, "messages": []})
    assert body == {"stream": True, "max_tokens": 5, "messages": [], "anthropic_version": "vertex-2023-10-16"}
    assert path.endswith(":streamRawPredict")
    pair = translator.for_attempt("/v1/messages", claude)
    assert pair is not None and pair.answer is None, "an Anthropic client's request is only rewritten, its answer is Anthropic's already"
    assert translator.for_attempt("/v1/chat/completions", claude).answer is not None


@pytest.mark.parametrize(("lifetime_s", "renew_before_s"), [(3600, 300), (300, 150), (4, 2)])
def test_a_token_is_renewed_before_it_expires(lifetime_s, renew_before_s):
    expiry = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(seconds=lifetime_s)
    assert vertex._renew_at(expiry) == pytest.approx(time.time() + lifetime_s - renew_before_s, abs=0.5)


def test_a_kinds_required_keys_are_named_when_missing():
    with pytest.raises(ConfigError) as caught:
        config("  - {model: vertex_ai/gemini-2.5-flash, vertex_location: us-east5}")
    assert "model_providers[0].vertex_project: is required for vertex_ai/… providers" in str(caught.value)


def test_an_undeclared_kind_is_openai_compatible_with_a_bearer_key():
    kind = providers.kind_named("together")
    assert kind.api == translator.OPENAI_CHAT and kind.credential("k") == ("authorization", "Bearer k") and kind.base_url is None



def test_a_kind_with_its_own_header_is_its_module_portkey():
    """providers/portkey.py and its line in KINDS: its default base_url, and its header is a credential no client's value of reaches any provider."""
    (provider,) = config("  - {name: pk, model: portkey/gpt-4o, access_key: k, headers: {x-portkey-virtual-key: openai-prod}}").providers.values()
    assert (provider.scheme, provider.host, provider.port, provider.path_prefix) == ("https", "api.portkey.ai", 443, "")
    assert upstream_path(provider, "/v1/chat/completions") == "/v1/chat/completions"
    assert "x-portkey-api-key" in providers.CREDENTIAL_HEADERS


BEDROCK = "  - {name: b, model: 'bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0', aws_region_name: us-east-1, aws_access_key_id: AKIAMOCKMOCKMOCK0001, aws_secret_access_key: mock-secret-access-key}"


def test_a_bedrock_signature_covers_the_body_one_changed_byte_and_it_is_refused():
    provider = config(BEDROCK).providers["b"]
    bedrock.credentials_for(provider).refresh()
    path, body = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse", b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
    headers = {"host": provider.authority, **dict(bedrock.sign(provider, path, body))}
    mock = BedrockState()

    assert mock.refusal("POST", path, headers, body) is None
    assert mock.refusal("POST", path, headers, body.replace(b"hi", b"ho"))[2] == "InvalidSignatureException"
    assert mock.refusal("POST", path.replace("converse", "converse-stream"), headers, body)[2] == "InvalidSignatureException"
    assert "mock-secret-access-key" not in repr(provider), "the secret never shows in a repr (nor in logs)"


def test_bedrocks_region_comes_from_the_entry_else_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    provider = next(iter(config("  - {model: 'bedrock/amazon.nova-pro-v1:0'}").providers.values()))
    assert (provider.host, provider.aws_region_name) == ("bedrock-runtime.eu-west-3.amazonaws.com", "eu-west-3")
    assert upstream_path(provider, "/v1/chat/completions") == "/model/amazon.nova-pro-v1%3A0/converse"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ConfigError, match=r"model_providers\[0\]\.model: bedrock/… providers need a region"):
        config("  - {model: 'bedrock/amazon.nova-pro-v1:0'}")


def test_anthropic_clients_on_bedrock_get_claudes_events_back_from_invoke_frames():
    from extproc.mock.anthropic import events
    from extproc.mock.bedrock import frame
    from extproc.translator import anthropic_bedrock

    sent = [line[6:] for event in events("b", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, 1) for line in event.split(b"\n") if line.startswith(b"data: ")]
    frames = b"".join(frame("chunk", {"bytes": base64.b64encode(item).decode()}) for item in sent)
    stream = anthropic_bedrock.StreamTranslator()
    out = b"".join(stream.feed(frames[index : index + 11]) for index in range(0, len(frames), 11)) + stream.feed(b"", end=True)

    assert [json.loads(block.split(b"\n")[1][6:]) for block in out.split(b"\n\n") if block] == [json.loads(item) for item in sent]
    cut = anthropic_bedrock.StreamTranslator()
    assert b"ended before its message_stop" in cut.feed(frames[: len(frames) // 2], end=True)


def test_anthropic_betas_go_to_bedrock_in_the_body_those_bedrock_takes_only():
    from extproc.translator import anthropic_bedrock

    payload = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "context_management": {"edits": []}}
    asked = "claude-code-20250219, context-management-2025-06-27,interleaved-thinking-2025-05-14"
    request = anthropic_bedrock.request(payload, "anthropic.claude-sonnet-4", "/model/x/invoke", asked)
    assert request.body["anthropic_beta"] == ["context-management-2025-06-27", "interleaved-thinking-2025-05-14"]
    assert request.body["context_management"] == {"edits": []} and request.dropped == ("anthropic_beta",)
    plain = anthropic_bedrock.request(payload, "anthropic.claude-sonnet-4", "/model/x/invoke")
    assert "anthropic_beta" not in plain.body and plain.dropped == ()


GROUPED = config(
    "  - {name: a, model: openai/gpt-4o, base_url: 'http://a', priority: 0, weight: 3}\n"
    "  - {name: c, model: openai/gpt-4o, base_url: 'http://c', priority: 1}\n"
    "  - {name: b, model: openai/gpt-4o, base_url: 'http://b', priority: 0, retry_policy: {fallback_models: [openai/gpt-4o-mini]}}\n"
    "  - {name: m, model: openai/gpt-4o-mini, base_url: 'http://m'}"
)


def test_priority_groups_order_the_chains_a_member_tries_its_group_before_the_next_group():
    assert GROUPED.models["openai/gpt-4o"] == ("a", "b", "c")
    assert GROUPED.groups["openai/gpt-4o"] == ((("a", "b"), (3, 1)), (("c",), (1,)))
    assert GROUPED.chains["b"].providers == ("b", "a", "c", "m"), "itself, its group, the next group, the fallback model"
    assert GROUPED.chains["a"].providers == ("a", "b", "c", "m") and GROUPED.chains["c"].providers == ("c", "m")
    assert "openai/gpt-4o-mini" not in GROUPED.groups, "no group of more than one: routed as before, no draw"


def test_by_weight_draws_the_first_member_in_proportion_to_its_weight():
    from extproc.processor.router import by_weight

    draws = [index / 400 for index in range(400)]  # evenly over [0, 1)
    firsts = [by_weight(("a", "b"), (3, 1), iter([draw, 0.0]).__next__)[0] for draw in draws]
    assert (firsts.count("a"), firsts.count("b")) == (300, 100)
    assert by_weight(("a", "b", "c"), (1, 1, 1), iter([0.99, 0.99, 0.0]).__next__) == ["c", "b", "a"]
