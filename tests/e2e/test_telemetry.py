"""Token usage and traces, read by the real Envoy from real answers, counted by the real sidecar."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from .harness import OtlpReceiver, chat, gateway_config, http_stream, provider, wait_for

GPT4 = "openai/gpt-4"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
SERVER, CLIENT = 2, 3  # OTLP span kinds


@pytest.fixture
def otlp():
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def test_tokens_of_json_and_streamed_answers_are_counted_for_the_provider_that_answered(mocks, gateway):
    primary = mocks.start("primary", status=429)
    secondary = mocks.start("secondary", chunks=5, chunk_interval_s=0.2)
    mini = mocks.start("mini")
    gw = gateway(
        {
            **gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary), provider("mini", "openai/gpt-4o-mini", mini), access_log=True),
            "cooldown": {"enabled": False},  # every request really fails over
        }
    )

    # The mocks count words: prompt = words sent, completion = words of "[name] you said: <prompt>".
    plain = chat(gw.port, {"model": GPT4, "messages": [{"role": "user", "content": "one two three"}]})
    status, _, arrivals = http_stream(gw.port, {"model": GPT4, "stream": True, "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "a b c d"}]})
    unmetered, _, _ = http_stream(gw.port, {"model": GPT4, "stream": True, "messages": [{"role": "user", "content": "no usage asked"}]})
    other = chat(gw.port, {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x y"}]})

    assert (plain.status, status, unmetered, other.status) == (200, 200, 200, 200)
    assert plain.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert json.loads(arrivals[-2][1])["usage"]["completion_tokens"] == 7
    assert arrivals[-1][0] - arrivals[0][0] > 0.6, "the stream still arrives chunk by chunk while Envoy reads its usage"
    wait_for(lambda: gw.metric("extproc_requests_total", model=GPT4) == 3 and gw.metric("extproc_requests_total", model="openai/gpt-4o-mini") == 1)
    assert gw.metric("extproc_tokens_total", provider="secondary", model=GPT4, type="input") == 3 + 4
    assert gw.metric("extproc_tokens_total", provider="secondary", model=GPT4, type="output") == 6 + 7
    assert gw.metric("extproc_tokens_total", provider="mini", model="openai/gpt-4o-mini", type="input") == 2
    assert gw.metric("extproc_tokens_total", provider="primary") is None, "a 429 burns no tokens"

    gw.stop()
    lines = [json.loads(line) for line in gw.process_output.splitlines() if line.startswith("{")]
    assert [(line["input_tokens"], line["output_tokens"]) for line in lines] == [(3, 6), (4, 7), (None, None), (2, 5)]


def test_token_accounting_can_be_switched_off(mocks, gateway):
    main = mocks.start("main")
    gw = gateway({**gateway_config(provider("main", GPT4, main), access_log=True), "metrics": {"token_usage": False}})

    assert chat(gw.port, {"model": GPT4, "messages": [{"role": "user", "content": "hi"}]}).status == 200
    wait_for(lambda: gw.metric("extproc_requests_total", model=GPT4) == 1)
    assert gw.metric("extproc_tokens_total") is None
    gw.stop()
    assert "input_tokens" not in gw.process_output


def _traced(gw_config: dict, otlp: OtlpReceiver, **tracing) -> dict:
    return {**gw_config, "tracing": {"endpoint": f"http://127.0.0.1:{otlp.port}", **tracing}}


def test_a_failover_is_one_trace_with_a_span_per_attempt_continuing_the_clients_trace(mocks, gateway, otlp):
    primary = mocks.start("primary", status=429)
    secondary = mocks.start("secondary")
    gw = gateway(_traced(gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary)), otlp, service_name="llm-gateway"))

    answer = chat(gw.port, {"model": GPT4, "messages": [{"role": "user", "content": "one two three"}]}, {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})

    assert answer.status == 200
    spans = wait_for(lambda: (found := otlp.trace(CLIENT_TRACE)) and len([s for s in found if s.kind == SERVER]) == 1 and found)
    server = next(span for span in spans if span.kind == SERVER)
    assert server.parent_id == CLIENT_SPAN and server.service == "llm-gateway"
    assert server.name == f"llm {GPT4}"
    assert server.attributes["extproc.provider"] == "secondary" and server.attributes["http.status_code"] == "200"
    assert (server.attributes["gen_ai.usage.input_tokens"], server.attributes["gen_ai.usage.output_tokens"]) == ("3", "6")
    attempts = sorted((span for span in spans if span.kind == CLIENT and span.name.startswith("router ")), key=lambda span: span.attributes["extproc.attempt"])
    assert [(span.attributes["extproc.attempt"], span.attributes["extproc.provider"], span.attributes["http.status_code"]) for span in attempts] == [("1", "primary", "429"), ("2", "secondary", "200")]
    assert all(span.parent_id == server.span_id for span in attempts)
    assert all(span.attributes["gen_ai.provider.name"] == "openai" and span.attributes["gen_ai.request.model"] == GPT4 for span in attempts)
    assert attempts[1].attributes["retry.count"] == "1"
    # Each provider got the trace, with its own attempt's span as the parent.
    for mock, span in ((primary, attempts[0]), (secondary, attempts[1])):
        assert mock.received[0].header("traceparent") == f"00-{CLIENT_TRACE}-{span.span_id}-01"
    assert otlp.requests and set(otlp.requests) == {"/v1/traces"}


def test_a_hedged_request_traces_both_attempts_the_loser_marked_cancelled(mocks, gateway, otlp):
    slow, fast = mocks.start("slow", delay_s=3), mocks.start("fast")
    gw = gateway(_traced(gateway_config(provider("slow", GPT4, slow, retry_policy={"hedge_after": "300ms"}), provider("fast", GPT4, fast)), otlp))

    answer = chat(gw.port, {"model": GPT4, "messages": [{"role": "user", "content": "hi"}]}, {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "fast"
    spans = wait_for(lambda: (found := otlp.trace(CLIENT_TRACE)) and len([s for s in found if s.kind == CLIENT and s.name.startswith("router ")]) == 2 and found)
    server = next(span for span in spans if span.kind == SERVER)
    # Each attempt's own address; its host-metadata tags (extproc.provider, …) name the winner on both: Envoy shares one upstream info.
    attempts = {span.attributes["upstream_address"]: span for span in spans if span.kind == CLIENT and span.name.startswith("router ")}
    loser, winner = attempts[f"127.0.0.1:{slow.port}"], attempts[f"127.0.0.1:{fast.port}"]
    assert loser.parent_id == winner.parent_id == server.span_id
    assert (loser.attributes["canceled"], loser.attributes["response_flags"], loser.attributes["http.status_code"]) == ("true", "UT", "0")
    assert (winner.attributes["retry.count"], winner.attributes["http.status_code"]) == ("1", "200") and "canceled" not in winner.attributes
    assert server.attributes["extproc.provider"] == "fast"


def test_without_a_traceparent_the_trace_starts_at_the_gateway(mocks, gateway, otlp):
    main = mocks.start("main")
    gw = gateway(_traced(gateway_config(provider("main", GPT4, main)), otlp))

    assert chat(gw.port, {"model": GPT4, "messages": []}).status == 200

    server = wait_for(lambda: next((span for span in otlp.spans if span.kind == SERVER), None))
    assert server.parent_id == "" and server.service == "extproc"
    trace_id, parent = main.received[0].header("traceparent").split("-")[1:3]
    assert trace_id == server.trace_id
    assert parent in {span.span_id for span in otlp.trace(server.trace_id) if span.kind == CLIENT}


def test_the_spans_of_many_requests_leave_envoy_together_not_a_few_at_a_time(mocks, gateway, otlp):
    """Envoy exports when 5 spans are buffered unless told otherwise: under load, an export every two to four requests."""
    main = mocks.start("main")
    gw = gateway(_traced(gateway_config(provider("main", GPT4, main)), otlp))

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(lambda _: chat(gw.port, {"model": GPT4, "messages": []}).status, range(40)))

    assert statuses == [200] * 40
    wait_for(lambda: len([span for span in otlp.spans if span.kind == SERVER]) == 40)
    assert len(otlp.spans) >= 80  # a server span and an attempt span per request, at least
    assert 1 <= len(otlp.requests) <= 3, f"{len(otlp.requests)} exports for {len(otlp.spans)} spans"
