"""`first_token_timeout` and `hedge_after` without Envoy: the config, the rendered retry shape, when a stream's first token has come, what a timed attempt came to."""

import textwrap
from pathlib import Path

import pytest

from extproc.cli import main
from extproc.config import ConfigError, parse_config
from extproc.processor.context import RequestContext
from extproc.processor.cooldown import FAILURE_KINDS, classify
from extproc.processor.firsttoken import MAX_HELD_BYTES, FirstToken, StreamError
from extproc.render import render

from .rendered import upstream_filters


def config(policy: str):
    return parse_config(
        f"""
listeners: [{{type: model, name: llm, port: 12000, timeout: 90s}}]
model_providers:
  - {{name: a, model: openai/gpt-4o, base_url: http://127.0.0.1:1, retry_policy: {policy}}}
  - {{name: b, model: openai/gpt-4o, base_url: http://127.0.0.1:2}}
""",
        "test.yaml",
        {},
    )


def route_and_cluster(policy: str) -> tuple[dict, list[dict], dict]:
    """The chain starting at `a`: its route, its attempts' upstream filters, and the virtual host."""
    loaded = config(policy)
    bootstrap = render(loaded)
    virtual_host = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    name = loaded.chain_clusters["a"]
    route = next(route for route in virtual_host["routes"] if route["name"] == name)
    return route, upstream_filters(bootstrap, name), virtual_host


def filter_names(filters: list[dict]) -> list[str]:
    return [item["name"] for item in filters]


def test_first_token_timeout_is_the_per_try_timeout_with_the_stream_start_held_and_a_timeout_failing_over():
    route, cluster, virtual_host = route_and_cluster("{retry_on: [429], first_token_timeout: 2s, per_try_timeout: 30s}")

    retry = route["route"]["retry_policy"]
    assert retry["per_try_timeout"] == "2.000s", "the shorter of the two: both end an attempt that sent the client nothing"
    assert retry["retry_on"] == "retriable-status-codes,reset", "Envoy retries a per-try timeout only on a reset condition"
    assert "hedge_policy" not in route["route"]
    assert route["metadata"]["filter_metadata"]["extproc"]["timing"] == "first_token"
    assert filter_names(cluster)[:2] == ["extproc.failed", "extproc.first_token"]
    assert "include_is_timeout_retry_header" not in virtual_host
    hold = cluster[1]
    ext_proc = hold["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0]["on_match"]["action"]["typed_config"]["typed_config"]["typed_config"]
    assert ext_proc["failure_mode_allow"] is True, "a sidecar that cannot hold a stream lets it go on, never an error"
    assert ext_proc["message_timeout"] == "90.000s", "the hold is bounded by the attempt's timeouts, not by a message timeout"
    assert ext_proc["grpc_service"]["initial_metadata"] == [{"key": "x-extproc-phase", "value": "hold"}], "an error event before the first token fails over"


def test_hedge_after_hedges_on_the_per_try_timeout_and_marks_timeout_retries():
    route, cluster, virtual_host = route_and_cluster("{retry_on: [429], hedge_after: 1s}")

    assert route["route"]["retry_policy"]["per_try_timeout"] == "1.000s"
    assert route["route"]["retry_policy"]["retry_on"] == "retriable-status-codes", "a hedge needs no retry condition"
    assert route["route"]["hedge_policy"] == {"hedge_on_per_try_timeout": True}
    assert route["metadata"]["filter_metadata"]["extproc"]["timing"] == "hedge"
    assert filter_names(cluster)[0] == "extproc.first_token" and "extproc.failed" not in filter_names(cluster), "a hedging chain's failed answers: from its log entries"
    hold = cluster[0]["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0]["on_match"]["action"]["typed_config"]["typed_config"]["typed_config"]
    assert hold["grpc_service"]["initial_metadata"] == [
        {"key": "x-extproc-phase", "value": "hedged_hold"},
        {"key": "x-extproc-hedge-after", "value": "1"},
    ], "no failed answer released while a hedge may be in flight: an error waits for the hedge (twice hedge_after)"
    assert virtual_host["include_is_timeout_retry_header"] is True
    patch = next(item for item in cluster if item["name"] == "extproc.model_patch")
    assert 'remove("x-envoy-is-timeout-retry")' in patch["typed_config"]["default_source_code"]["inline_string"], "no provider is sent Envoy's mark"


def test_a_chain_of_one_attempt_does_not_hedge_and_is_not_timed_out_at_hedge_after():
    chain = config("{retry_on: [429], hedge_after: 1s, max_attempts: 1}").chains["a"]
    assert chain.policy.hedge_after is None and chain.policy.attempt_timeout is None and not chain.hedges


def test_a_plain_chain_has_no_hold_and_no_timing():
    route, cluster, virtual_host = route_and_cluster("{retry_on: [429]}")

    assert "per_try_timeout" not in route["route"]["retry_policy"] and "metadata" not in route
    assert "extproc.first_token" not in filter_names(cluster)
    assert "include_is_timeout_retry_header" not in virtual_host


def test_a_new_timing_is_a_new_chain_cluster():
    assert config("{first_token_timeout: 2s}").chain_clusters["a"] != config("{first_token_timeout: 3s}").chain_clusters["a"]
    assert config("{first_token_timeout: 2s}").chain_clusters["a"] != config("{hedge_after: 2s}").chain_clusters["a"]


def test_the_two_settings_exclude_each_other_and_say_why():
    with pytest.raises(ConfigError) as error:
        config("{first_token_timeout: 2s, hedge_after: 1s}")
    assert "model_providers[0].retry_policy: first_token_timeout and hedge_after exclude each other" in str(error.value)
    with pytest.raises(ConfigError, match=r"retry_policy.hedge_after: expected a duration"):
        config("{hedge_after: soon}")


def test_the_context_says_whether_the_chain_hedges():
    assert RequestContext.decode(RequestContext("/v1/chat/completions", hedged=True).encode()).hedged
    assert not RequestContext.decode(RequestContext("/v1/chat/completions").encode()).hedged


def chunk(delta: dict, finish: str | None = None) -> bytes:
    import json

    return f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]})}\n\n".encode()


@pytest.mark.parametrize(
    ("chunks", "held"),
    [
        ([chunk({"role": "assistant", "content": ""})], True),  # OpenAI's opening chunk
        ([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"})], False),
        ([chunk({"role": "assistant", "tool_calls": [{"index": 0}]})], False),
        ([chunk({}, finish="stop")], False),
        ([b": keep-alive\n\n"], True),  # a comment is not a token
        ([b"event: message_start\ndata: {}\n\n", b"event: ping\ndata: {}\n\n", b"event: content_block_start\ndata: {}\n\n"], True),
        ([b"event: message_start\ndata: {}\n\n", b"event: content_block_delta\ndata: {}\n\n"], False),
        ([b"event: error\ndata: {}\n\n"], False),
        ([b"event: response.created\ndata: {}\n\n", b"event: response.output_text.delta\ndata: {}\n\n"], False),
        ([b"data: [DONE]\n\n"], False),
        ([b"data: {not json\n\n"], False),  # never held on a guess
        ([b'data: {"error": {"message": "overloaded"}}\n\n'], False),
        ([chunk({"content": "Hi"})[:20], chunk({"content": "Hi"})[20:]], False),  # a token split across chunks
        ([chunk({"content": "Hi"}).replace(b"\n", b"\r\n")[:-1]], True),  # the event is not complete yet
    ],
)
def test_a_stream_is_held_until_an_event_carries_content(chunks, held):
    first = FirstToken()
    seen = [first.feed(piece) for piece in chunks]
    assert seen[-1] is not held and not any(seen[:-1])


ANTHROPIC_OVERLOADED = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'


@pytest.mark.parametrize(
    ("chunks", "error"),
    [
        ([b"event: message_start\ndata: {}\n\n", b"event: error\ndata: " + ANTHROPIC_OVERLOADED + b"\n\n"], StreamError(529, ANTHROPIC_OVERLOADED)),
        ([b'event: error\ndata: {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}\n\n'], StreamError(429, b'{"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}')),
        ([chunk({"role": "assistant", "content": ""}), b'data: {"error": {"message": "m", "type": "server_error", "code": null}}\n\n'], StreamError(500, b'{"error": {"message": "m", "type": "server_error", "code": null}}')),
        ([b'data: {"error": {"message": "m", "type": "requests", "code": "rate_limit_exceeded"}}\n\n'], StreamError(429, b'{"error": {"message": "m", "type": "requests", "code": "rate_limit_exceeded"}}')),
        ([b'event: error\ndata: {"type": "error", "code": "server_is_overloaded", "message": "m", "param": null}\n\n'], StreamError(500, b'{"error":{"message":"m","code":"server_is_overloaded","param":null}}')),
        ([b'event: error\ndata: {"type": "error", "error": {"type": "novel_error"}}\n\n'], StreamError(500, b'{"type": "error", "error": {"type": "novel_error"}}')),
        ([chunk({"content": "Hi"}), b"event: error\ndata: " + ANTHROPIC_OVERLOADED + b"\n\n"], None),  # content came first: the answer, not a failure
        ([b"event: error\ndata: not json\n\n"], None),  # unreadable: released as it is
    ],
)
def test_an_error_event_before_any_content_is_the_attempts_failure_with_its_status_and_body(chunks, error):
    first = FirstToken()
    assert any(first.feed(piece) for piece in chunks)
    assert first.error == error


def test_the_end_of_a_stream_or_too_much_without_a_token_lets_it_go():
    assert FirstToken().feed(b"", end=True)
    assert FirstToken().feed(b": " + b"x" * MAX_HELD_BYTES + b"\n")


@pytest.mark.parametrize(
    ("status", "flags", "timing", "kind"),
    [
        (0, {"upstream_request_timeout"}, "first_token", "first_token_timeout"),
        (0, {"upstream_request_timeout"}, "", "timeout"),
        (0, {"upstream_request_timeout"}, "hedge", "hedged_out"),  # past hedge_after, then lost the race
        (0, set(), "hedge", "hedged_out"),  # the hedge that lost
        (0, {"upstream_remote_reset"}, "hedge", "reset"),
        (500, {"upstream_request_timeout"}, "hedge", "server_error"),  # hedged, then failed on its own
        (429, set(), "hedge", "rate_limited"),
        (0, set(), "first_token", "cancelled"),
    ],
)
def test_what_a_timed_attempt_came_to(status, flags, timing, kind):
    assert classify(status, flags, timing) == kind


def test_a_first_token_stall_counts_against_the_provider_and_a_lost_race_does_not():
    assert "first_token_timeout" in FAILURE_KINDS and "hedged_out" not in FAILURE_KINDS


def test_the_config_references_worked_example_is_a_valid_config_with_the_chain_it_describes():
    readme = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    example = readme[readme.index("  Two keys of one model sharing it 3:1") :]
    example = example[example.index("```yaml") + 7 : example.index("```", example.index("```yaml") + 7)]
    loaded = parse_config(f"listeners: [{{type: model, name: llm, port: 12000}}]\n{textwrap.dedent(example)}", "docs/config.md", {"KEY_A": "a", "KEY_B": "b", "AZURE_KEY": "z", "AWS_ACCESS_KEY_ID": "x"})

    assert loaded.chains["key-a"].providers == ("key-a", "key-b", "azure", "bedrock")
    assert loaded.chains["key-b"].providers == ("key-b", "key-a", "azure", "bedrock")
    assert [loaded.providers[name].group for name in ("key-a", "key-b", "azure")] == ["openai/gpt-4o#1", "openai/gpt-4o#1", "openai/gpt-4o#2"]
    assert loaded.chains["key-a"].policy.timing == "first_token" and loaded.chains["key-a"].policy.attempt_timeout == 2.0


def test_check_shows_the_groups_their_weights_and_the_timing(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(
        """
listeners: [{type: model, name: llm, port: 12000}]
model_providers:
  - {name: key-a, model: openai/gpt-4o, access_key: a, priority: 0, weight: 3, retry_policy: {hedge_after: 1s}}
  - {name: key-b, model: openai/gpt-4o, access_key: b, priority: 0, weight: 1}
  - {name: azure, model: openai/gpt-4o, base_url: https://res.openai.azure.com/openai/v1, provider_interface: azure_openai, access_key: z, priority: 1}
  - {name: solo, model: openai/gpt-4o-mini, access_key: s, retry_policy: {first_token_timeout: 2500ms}}
"""
    )
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "model openai/gpt-4o: key-a×3 | key-b×1 -> azure; hedged after 1s" in out
    assert "model openai/gpt-4o-mini: solo; an attempt without its first token in 2.5s is left" in out
