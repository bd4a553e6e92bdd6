"""Router answers kept by request shape: given again only where a fresh decision would be the same."""

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config import parse_config
from extproc.config.store import Live
from extproc.processor import router
from extproc.processor.context import RequestContext
from extproc.processor.cooldown import Outcome, ProviderHealth
from extproc.server import wire
from extproc.server.answers import Answers
from extproc.server.router_stream import RouterStream

from .test_streams import headers_message

CONFIG = parse_config(
    """
listeners: [{type: model, name: llm, port: 0, max_body_bytes: 4KiB}]
model_providers:
  - {name: a, model: openai/gpt-4, base_url: "http://127.0.0.1:1", access_key: key-a}
  - {name: b, model: openai/gpt-4, base_url: "http://127.0.0.1:2", access_key: key-b}
  - {name: w1, model: openai/gpt-4o, base_url: "http://127.0.0.1:3", access_key: key-w1, weight: 3, priority: 1}
  - {name: w2, model: openai/gpt-4o, base_url: "http://127.0.0.1:4", access_key: key-w2, weight: 1, priority: 1}
  - {name: vertex, model: vertex_ai/gemini-2.5-flash, vertex_project: p1, vertex_location: global}
""",
    "test.yaml",
    {},
)
CLIENT = {":method": "POST", ":path": "/v1/chat/completions", "content-type": "application/json", "x-request-id": "r1"}


def request(model: str = "openai/gpt-4", **headers: str) -> pb.ProcessingRequest:
    """A headers message for a JSON body `{"model": "<model>", ...}` whose model Envoy found."""
    message = headers_message({**CLIENT, "content-length": "100", **{name.replace("_", "-"): value for name, value in headers.items()}})
    found = message.metadata_context.filter_metadata["extproc.body"]
    found.fields["json"].string_value = "valid"
    found.fields["model"].string_value = model
    found.fields["model_start"].number_value = 10
    found.fields["model_end"].number_value = 12 + len(model)
    return message


class Router:
    """Router streams sharing one `Answers`, as the servicer's do; counts the decisions really made."""

    def __init__(self, monkeypatch, config=CONFIG, health: ProviderHealth | None = None):
        self.live, self.health, self.answers, self.decided = Live.of(config), health, Answers(), 0
        route = router.route

        def counted(*args, **kwargs):
            self.decided += 1
            return route(*args, **kwargs)

        monkeypatch.setattr(router, "route", counted)

    def send(self, message: pb.ProcessingRequest) -> pb.ProcessingResponse:
        stream = RouterStream(self.live, self.health, "llm", self.answers)
        answer = pb.ProcessingResponse.FromString(wire.encode_response(stream.handle(message)))
        assert stream.done
        return answer


def provider_of(answer: pb.ProcessingResponse) -> str:
    headers = {item.header.key: item.header.raw_value.decode() for item in answer.request_headers.response.header_mutation.set_headers}
    return headers["x-arch-llm-provider"]


def test_a_repeated_request_gets_the_same_answer_without_a_second_decision(monkeypatch):
    gateway = Router(monkeypatch)
    first = gateway.send(request())
    again = [gateway.send(request(x_request_id=f"r{n}")) for n in range(5)]
    assert gateway.decided == 1, "the request id differs per request and is not read by the decision"
    assert all(answer == first for answer in again)
    assert provider_of(first) == "a"


@pytest.mark.parametrize(
    "change",
    [
        {"authorization": "Bearer client"},  # an owned header's value: it may be forwarded (passthrough) or restored
        {"x-envoy-max-retries": "5"},  # a header name the decision drops
        {"cookie": "s=1"},
    ],
)
def test_a_request_differing_in_what_the_decision_reads_is_decided_afresh(monkeypatch, change):
    gateway = Router(monkeypatch)
    gateway.send(request())
    changed = gateway.send(request(**{name.replace("-", "_"): value for name, value in change.items()}))
    assert gateway.decided == 2
    removed = set(changed.request_headers.response.header_mutation.remove_headers)
    for name in change:
        assert name in removed or name == "authorization", "the fresh decision saw the header"


def test_another_path_or_model_is_another_shape(monkeypatch):
    gateway = Router(monkeypatch)
    gateway.send(request())
    other_path = request()
    other_path.request_headers.headers.headers[1].raw_value = b"/v1/chat/completions?x=1"
    for message in (other_path, request("gpt-4")):
        gateway.send(message)
    assert gateway.decided == 3


def test_the_model_after_a_longer_prompt_is_the_same_shape_and_its_answer_says_where_envoy_found_it(monkeypatch):
    """SDKs put `model` after `messages`: its place moves with every prompt, the kept answer must not depend on it."""
    gateway = Router(monkeypatch)
    first = gateway.send(request())
    moved = request()
    moved.metadata_context.filter_metadata["extproc.body"].fields["model_start"].number_value = 5000
    moved.metadata_context.filter_metadata["extproc.body"].fields["model_end"].number_value = 5014
    assert gateway.send(moved) == first and gateway.decided == 1
    fields = first.dynamic_metadata.fields["extproc"].struct_value.fields
    assert "patch_start" not in fields and fields["patch_value"].string_value == '"gpt-4"', "Envoy's Lua patches the place it found"
    context = RequestContext.decode(fields["ctx"].string_value, found_at=5000)
    assert (context.span.start, context.span.end, context.body_model) == (5000, 5007, "gpt-4"), "a retry reads the patched model's place from Envoy's finding"


def test_the_headers_are_screened_before_a_kept_answer_is_used(monkeypatch):
    gateway = Router(monkeypatch)
    gateway.send(request())
    too_large = gateway.send(request(content_length="5000"))
    assert too_large.immediate_response.status.code == 413, "content-length is not part of the shape: the limit is checked every time"
    repeated = request(x_extra="1")
    assert gateway.send(repeated).HasField("request_headers")
    for _ in range(120):  # the same header names, so the same shape: but 120 more lines of them
        repeated.request_headers.headers.headers.add(key="x-extra", raw_value=b"1")
    assert gateway.send(repeated).immediate_response.status.code == 431, "the header count is checked every time"
    assert gateway.decided == 2


def test_a_kept_answer_holds_only_while_the_cooldowns_it_saw_do(monkeypatch):
    now = [1000.0]
    health = ProviderHealth(CONFIG.cooldown, clock=lambda: now[0])
    gateway = Router(monkeypatch, health=health)
    assert provider_of(gateway.send(request())) == "a"
    health.record(Outcome("a", 429, "rate_limited", retry_after_s=10))
    assert provider_of(gateway.send(request())) == "b", "the next request after a 429 starts elsewhere"
    assert provider_of(gateway.send(request())) == "b"
    assert gateway.decided == 2, "b while a cools down: kept too"
    now[0] += 11  # a's cooldown is over: it is half-open
    assert provider_of(gateway.send(request())) == "a", "one trial request: b's answer no longer holds"
    assert provider_of(gateway.send(request())) == "b", "the others pass a over while its trial is out"
    assert provider_of(gateway.send(request())) == "b"
    assert gateway.decided == 5, "passed over for a trial, not a cooldown: decided each time"
    health.record(Outcome("a", 200, "ok", started=now[0]))
    assert provider_of(gateway.send(request())) == "a"
    assert provider_of(gateway.send(request())) == "a"
    assert gateway.decided == 6
    health.record(Outcome("b", 429, "rate_limited", retry_after_s=10))
    assert provider_of(gateway.send(request())) == "a"
    assert gateway.decided == 6, "a cooldown further down the chain leaves a's kept answer right"
    health.record(Outcome("a", 429, "rate_limited", retry_after_s=10))
    assert gateway.send(request()).immediate_response.status.code == 429, "both cooling: the gateway's own 429"
    assert gateway.decided == 7


def test_weighted_draws_and_minted_credentials_are_never_kept(monkeypatch):
    gateway = Router(monkeypatch)
    picks = {provider_of(gateway.send(request("openai/gpt-4o"))) for _ in range(200)}
    assert picks == {"w1", "w2"}, "each request draws its own start"
    gateway.send(request("vertex_ai/gemini-2.5-flash"))
    gateway.send(request("vertex_ai/gemini-2.5-flash"))
    assert gateway.decided == 202, "a Vertex token is minted at run time: the current one goes on each request"


def test_a_reload_drops_every_kept_answer(monkeypatch):
    gateway = Router(monkeypatch)
    gateway.send(request())
    reloaded = parse_config(
        """
listeners: [{type: model, name: llm, port: 0}]
model_providers:
  - {name: a, model: openai/gpt-4, base_url: "http://127.0.0.1:1", access_key: key-a2}
""",
        "test.yaml",
        {},
    )
    gateway.live = Live.of(reloaded)  # what a reload does: the servicer's streams read the new snapshot
    answer = gateway.send(request())
    assert gateway.decided == 2
    headers = {item.header.key: item.header.raw_value for item in answer.request_headers.response.header_mutation.set_headers}
    assert headers["authorization"] == b"Bearer key-a2", "the new key, not the kept answer's"


def test_kept_answers_are_bounded():
    answers = Answers(limit=3)
    for n in range(7):
        answers.put(CONFIG, n, "a", (), b"x")
    assert len(answers) == 1 + (6 % 3)
    assert answers.get(CONFIG, 6, None) == b"x" and answers.get(CONFIG, 0, None) is None
