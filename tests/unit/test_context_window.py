"""`max_input_tokens` and `retry_policy.context_window_fallbacks` without gRPC: which providers a long prompt goes to."""

import pytest

from extproc.config import ConfigError, parse_config
from extproc.processor import router

CONFIG = parse_config(
    """
listeners: [{type: model, port: 0}]
model_providers:
  - {name: small-a, model: openai/small, base_url: 'http://a', access_key: ka, max_input_tokens: 1000,
     retry_policy: {context_window_fallbacks: [openai/huge, openai/large]}}
  - {name: big-b, model: openai/small, base_url: 'http://b', access_key: kb, max_input_tokens: 4000}
  - {name: small-c, model: openai/small, base_url: 'http://c', access_key: kc, max_input_tokens: 1000}
  - {name: large, model: openai/large, base_url: 'http://l', access_key: kl, max_input_tokens: 100000}
  - {name: huge, model: openai/huge, base_url: 'http://h', access_key: kh, max_input_tokens: 50000}
  - {name: plain, model: openai/plain, base_url: 'http://p', access_key: kp}
""",
    "t.yaml",
    {},
)


def decide(model: str, tokens: int) -> router.Forward | router.errors.Reply:
    body = b'{"model": "' + model.encode() + b'", "messages": []}'
    headers = {":path": "/v1/chat/completions", ":method": "POST", "content-length": str(tokens * 4)}
    return router.on_body(CONFIG, CONFIG.listeners[0], headers, body)


def test_a_short_prompt_goes_as_ever():
    forward = decide("openai/small", 500)
    assert forward.provider == "small-a" and forward.moved_from is None
    assert router.MAX_RETRIES_HEADER not in dict(forward.headers.set), "every provider of the chain takes it"


def test_a_prompt_too_long_for_some_skips_them_uncalled_and_retries_stop_before_the_next_that_cannot_take_it():
    forward = decide("openai/small", 2000)
    assert forward.provider == "big-b", "small-a is skipped"
    assert dict(forward.headers.set)[router.MAX_RETRIES_HEADER] == "0", "after big-b comes small-c, which cannot take it"
    assert not forward.reusable, "a decision the prompt's length made is not kept for requests of the same shape"


def test_a_prompt_too_long_for_every_provider_goes_to_the_first_fallback_that_takes_it():
    forward = decide("openai/small", 60000)
    assert (forward.provider, forward.model, forward.moved_from) == ("large", "openai/large", "openai/small"), "huge (50k) cannot take it: large can"
    assert decide("openai/small", 20000).provider == "huge", "in the fallbacks' order"


def test_a_prompt_no_provider_takes_is_a_context_length_error_naming_the_estimate():
    reply = decide("openai/small", 200000)
    assert reply.status == 400 and reply.reason == "context_length_exceeded"
    assert "about 200000 tokens" in reply.body.decode() and "(at most 4000)" in reply.body.decode()


def test_a_model_without_windows_is_not_measured():
    forward = decide("openai/plain", 10**6)
    assert forward.provider == "plain" and forward.reusable


def test_a_context_window_fallback_must_be_a_served_model():
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "listeners: [{type: model, port: 0}]\nmodel_providers:\n"
            "  - {model: openai/a, base_url: 'http://a', retry_policy: {context_window_fallbacks: [openai/nope]}}",
            "t.yaml",
            {},
        )
    assert "model_providers[0].retry_policy.context_window_fallbacks[0]: model 'openai/nope' is not served by any provider" in str(caught.value)


def test_check_prints_the_fallbacks_on_the_models_chain(tmp_path, capsys):
    from extproc.cli import main

    path = tmp_path / "gw.yaml"
    path.write_text("listeners: [{type: model, port: 0}]\nmodel_providers:\n"
                    "  - {name: a, model: openai/a, base_url: 'http://a', max_input_tokens: 1000, retry_policy: {context_window_fallbacks: [openai/b]}}\n"
                    "  - {name: b, model: openai/b, base_url: 'http://b'}\n")
    assert main(["check", str(path)]) == 0
    assert "a; context window -> openai/b" in capsys.readouterr().out
