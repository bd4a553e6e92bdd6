"""Refusals another model may answer, without gRPC: which 400s they are, and the redirects that carry them."""

import json

import pytest

from extproc.config import parse_config
from extproc.processor import refusals
from extproc.processor.refusals import REDIRECT_TTL_S, Redirects
from extproc.render import render

from .rendered import hcm, upstream_filters

OPENAI_TOO_LONG = {"error": {"message": "This model's maximum context length is 128000 tokens.", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
ANTHROPIC_TOO_LONG = {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}
AZURE_FILTERED = {"error": {"message": "filtered", "type": None, "param": "prompt", "code": "content_filter", "innererror": {"code": "ResponsibleAIPolicyViolation"}}}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (OPENAI_TOO_LONG, "context_window"),
        (ANTHROPIC_TOO_LONG, "context_window"),
        ({"message": "Input is too long for requested model."}, "context_window"),  # Bedrock's ValidationException
        ({"object": "error", "message": "This model's maximum context length is 4096 tokens.", "type": "BadRequestError"}, "context_window"),  # vLLM
        (AZURE_FILTERED, "content_policy"),
        ({"error": {"message": "Your request was rejected by our safety system.", "type": "invalid_request_error", "code": "content_policy_violation"}}, "content_policy"),
        ({"error": {"message": "Invalid 'messages[0].role'.", "type": "invalid_request_error", "code": "invalid_value"}}, None),
    ],
)
def test_which_400s_are_refusals_another_model_may_answer(body, reason):
    assert refusals.reason(json.dumps(body).encode()) == reason


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_redirect_is_taken_up_once_and_never_after_it_expires():
    clock = Clock()
    redirects = Redirects(clock)
    token = redirects.start("openai/big", "openai/small", refusals.CONTEXT_WINDOW, "small", "/v1/chat/completions", {"authorization": "Bearer client"})
    taken = redirects.take(token)
    assert taken is not None and (taken.model, taken.asked, taken.originals) == ("openai/big", "openai/small", {"authorization": "Bearer client"})
    assert redirects.take(token) is None, "once"
    late = redirects.start("openai/big", "openai/small", refusals.CONTEXT_WINDOW, "small", "/v1/chat/completions", {})
    clock.now += REDIRECT_TTL_S + 1
    assert redirects.take(late) is None and redirects.take("forged") is None


@pytest.mark.parametrize(
    ("policy", "watched"),
    [
        ("{context_window_fallbacks: [openai/big]}", True),
        ("{content_policy_fallbacks: [openai/big], first_token_timeout: 2s}", True),
        ("{context_window_fallbacks: [openai/big], hedge_after: 1s}", False),  # no failed answer released beside a hedge: Envoy 1.40 crashes (a warning says so)
        ("{retry_on: [429]}", False),
    ],
)
def test_only_a_chain_with_refusal_fallbacks_reads_its_400s_and_follows_the_sidecars_redirect(policy, watched):
    route, filters, _ = _rendered(policy)
    names = [item["name"] for item in filters]
    assert ("extproc.refused" in names) is watched
    assert ("internal_redirect_policy" in route["route"]) is watched
    if watched:
        assert route["route"]["internal_redirect_policy"] == {"max_internal_redirects": 1, "redirect_response_codes": [307]}


def _rendered(policy: str) -> tuple[dict, list[dict], dict]:
    loaded = parse_config(
        "listeners: [{type: model, name: llm, port: 12000}]\nmodel_providers:\n"
        f"  - {{name: a, model: openai/gpt-4o, base_url: 'http://127.0.0.1:1', retry_policy: {policy}}}\n"
        "  - {name: b, model: openai/gpt-4o, base_url: 'http://127.0.0.1:2'}\n"
        "  - {name: big, model: openai/big, base_url: 'http://127.0.0.1:3'}\n",
        "t.yaml",
        {},
    )
    bootstrap = render(loaded)
    virtual_host = hcm(bootstrap)["route_config"]["virtual_hosts"][0]
    name = loaded.chain_clusters["a"]
    return next(route for route in virtual_host["routes"] if route["name"] == name), upstream_filters(bootstrap, name), virtual_host


def test_content_policy_fallbacks_on_a_chain_that_hedges_are_refused_naming_both_keys_and_check_prints_them(tmp_path, capsys):
    from extproc.cli import main
    from extproc.config import ConfigError

    entries = "listeners: [{type: model, port: 0}]\nmodel_providers:\n  - {name: a, model: openai/a, base_url: 'http://a', retry_policy: POLICY}\n  - {name: b, model: openai/b, base_url: 'http://b'}\n"
    with pytest.raises(ConfigError, match="content_policy_fallbacks and hedge_after exclude each other"):
        parse_config(entries.replace("POLICY", "{content_policy_fallbacks: [openai/b], hedge_after: 1s}"), "t.yaml", {})
    warned = parse_config(entries.replace("POLICY", "{context_window_fallbacks: [openai/b], hedge_after: 1s}"), "t.yaml", {})
    assert any("a provider's own refusal is not read there (hedge_after)" in warning for warning in warned.warnings)
    path = tmp_path / "gw.yaml"
    path.write_text(entries.replace("POLICY", "{content_policy_fallbacks: [openai/b], context_window_fallbacks: [openai/b]}"))
    assert main(["check", str(path)]) == 0
    assert "a; context window -> openai/b; content policy -> openai/b" in capsys.readouterr().out
