"""Cooldown decisions with an injected clock: no sleeping."""

import email.utils

import pytest

from extproc.config import Cooldown
from extproc.processor.cooldown import Outcome, ProviderHealth, classify, retry_after_seconds


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def health(clock, **policy) -> ProviderHealth:
    return ProviderHealth(Cooldown(**policy), clock)


def test_a_429_cools_for_retry_after_and_ends_by_itself(clock):
    states = health(clock)
    assert states.record(Outcome("a", 429, "rate_limited", 30)) == 30
    assert states.pick_start(["a", "b"]) == ("b", 0.0)
    clock.now += 29.5
    assert states.cooling("a")
    clock.now += 1
    assert not states.cooling("a")
    assert states.pick_start(["a", "b"]) == ("a", 0.0)


def test_after_a_cooldown_one_trial_request_finds_out_and_the_others_go_on(clock):
    states = health(clock, failure_threshold=3, default_cooldown=10)
    for _ in range(3):
        states.record(Outcome("a", 0, "timeout"))
    clock.now += 10.5
    assert states.pick_start(["a", "b"], trial_s=5) == ("a", 0.0), "the trial"
    assert states.pick_start(["a", "b"], trial_s=5) == ("b", 0.0), "while the trial is out, the others start on b"
    assert states.pick_start(["a"], trial_s=5) == ("a", 0.0), "with nowhere else to go they wait on the trial's provider, never 429"
    states.record(Outcome("a", 200, "ok", started=clock.now - 0.1))
    assert states.pick_start(["a", "b"], trial_s=5) == ("a", 0.0)
    assert states.pick_start(["a", "b"], trial_s=5) == ("a", 0.0), "the trial succeeded: a takes everything again"


def test_a_failed_trial_cools_at_once_and_an_unanswered_one_gives_way_to_the_next_trial(clock):
    states = health(clock, failure_threshold=3, default_cooldown=10)
    states.record(Outcome("a", 429, "rate_limited", 2))
    clock.now += 2.5
    assert states.pick_start(["a", "b"], trial_s=5) == ("a", 0.0)
    assert states.record(Outcome("a", 0, "timeout")) == 10, "one failure of a trial, not failure_threshold of them"
    assert states.pick_start(["a", "b"], trial_s=5) == ("b", 0.0)
    clock.now += 10.5
    assert states.pick_start(["a", "b"], trial_s=5) == ("a", 0.0)
    clock.now += 5.5  # the trial was never heard of (its client went away, say)
    assert states.pick_start(["a", "b"], trial_s=5) == ("a", 0.0), "a new trial"
    states.record(Outcome("a", 200, "ok", started=clock.now - 100))
    assert states.pick_start(["a", "b"], trial_s=5) == ("b", 0.0), "a success that started before the cooldown proves nothing"


def test_default_and_cap(clock):
    states = health(clock, default_cooldown=5, max_cooldown=60)
    assert states.record(Outcome("a", 429, "rate_limited", None)) == 5
    assert states.record(Outcome("b", 429, "rate_limited", 3600)) == 60


def test_all_cooling_reports_the_soonest(clock):
    states = health(clock)
    states.record(Outcome("a", 429, "rate_limited", 30))
    states.record(Outcome("b", 429, "rate_limited", 12))
    name, soonest = states.pick_start(["a", "b"])
    assert name is None and soonest == pytest.approx(12)


def test_failures_cool_only_after_the_threshold_and_success_resets_the_count(clock):
    states = health(clock, failure_threshold=3, default_cooldown=10)
    for _ in range(2):
        assert states.record(Outcome("a", 0, "connect_failure")) == 0
    states.record(Outcome("a", 200, "ok"))
    for _ in range(2):
        states.record(Outcome("a", 503, "server_error"))
    assert not states.cooling("a")
    assert states.record(Outcome("a", 0, "reset")) == 10
    assert states.cooling("a")


def test_only_time_ends_a_rate_limit_cooldown(clock):
    states = health(clock)
    states.record(Outcome("a", 429, "rate_limited", 60))
    clock.now += 2
    states.record(Outcome("a", 200, "ok", started=clock.now - 5))  # a long answer that began before the 429
    states.record(Outcome("a", 200, "ok", started=clock.now))  # and one that began after it
    assert states.remaining("a") == pytest.approx(58)


def test_a_success_ends_a_failure_cooldown_only_if_it_started_after_it(clock):
    states = health(clock, failure_threshold=2, default_cooldown=30)
    states.record(Outcome("a", 0, "reset"))
    clock.now += 1
    states.record(Outcome("a", 200, "ok", started=clock.now - 2))
    assert states.record(Outcome("a", 503, "server_error")) == 30, "an older success does not reset the count"
    clock.now += 1
    states.record(Outcome("a", 200, "ok", started=clock.now - 1.5))
    assert states.cooling("a"), "a success that started before the cooldown does not end it"
    states.record(Outcome("a", 200, "ok", started=clock.now - 0.5))
    assert not states.cooling("a")


def test_client_errors_do_not_count(clock):
    states = health(clock, failure_threshold=1)
    assert states.record(Outcome("a", 400, "client_error")) == 0
    assert not states.cooling("a")


def test_disabled_never_cools(clock):
    states = health(clock, enabled=False)
    assert states.record(Outcome("a", 429, "rate_limited", 30)) == 0
    assert states.pick_start(["a"]) == ("a", 0.0)


def test_retain_forgets_removed_providers(clock):
    states = health(clock)
    states.record(Outcome("a", 429, "rate_limited", 30))
    states.record(Outcome("b", 429, "rate_limited", 30))
    states.retain(["b"])
    assert not states.cooling("a") and states.cooling("b")


def test_retry_after_forms():
    now = 1_800_000_000.0
    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": email.utils.formatdate(now + 20, usegmt=True)}, now) == pytest.approx(20, abs=1)
    assert retry_after_seconds({"retry-after": email.utils.formatdate(now - 20, usegmt=True)}, now) == 0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "²"}) is None, "a unicode digit is not a number of seconds (it used to raise)"
    assert retry_after_seconds({"retry-after-ms": "²", "retry-after": "3"}) == 3
    assert retry_after_seconds({}) is None


@pytest.mark.parametrize(
    ("status", "flags", "kind"),
    [
        (429, (), "rate_limited"),
        (200, (), "ok"),
        (404, (), "client_error"),
        (503, (), "server_error"),
        (503, ("upstream_connection_failure",), "connect_failure"),
        (0, ("upstream_remote_reset",), "reset"),
        (504, ("upstream_request_timeout",), "timeout"),
        (0, ("downstream_connection_termination",), "cancelled"),
        (0, (), "cancelled"),
    ],
)
def test_classify(status, flags, kind):
    assert classify(status, flags) == kind


def test_a_refused_key_the_gateway_owns_cools_its_provider_at_once_for_the_longest_cooldown(clock):
    assert classify(401) == classify(403) == "auth_failed"
    assert classify(401, owns_key=False) == "client_error", "a client's own credential refused says nothing about the provider"
    states = health(clock, failure_threshold=3, max_cooldown=60)
    assert states.record(Outcome("a", 401, "auth_failed")) == 60, "a revoked key does not recover in seconds, nor needs three tries to be known"
    assert states.pick_start(["a", "b"]) == ("b", 0.0)
    clock.now += 61
    assert states.pick_start(["a", "b"], 5) == ("a", 0.0), "then one trial finds out"
    assert states.record(Outcome("a", 401, "auth_failed")) == 60


def test_slow_start_ramps_a_member_back_from_a_cooldown_from_a_tenth_of_its_weight_to_all_of_it(clock):
    states = health(clock, slow_start=30)
    assert states.ramped(("a", "b"), (3, 1)) == (3, 1), "never cooled: its whole weight"
    states.record(Outcome("a", 429, "rate_limited", 10))
    clock.now += 10
    assert states.pick_start(["a", "b"]) == ("a", 0.0), "its trial"
    assert states.ramped(("a", "b"), (3, 1)) == (3, 1), "on trial, not back yet: the trial decides, not the weights"
    states.record(Outcome("a", 200, "ok", started=clock.now))
    assert states.ramped(("a", "b"), (3, 1)) == pytest.approx((0.3, 1)), "back: a tenth of its weight"
    clock.now += 15
    assert states.ramped(("a", "b"), (3, 1)) == pytest.approx((1.5, 1)), "half the window: half its weight"
    clock.now += 15
    assert states.ramped(("a", "b"), (3, 1)) == (3, 1)
    assert health(clock).ramped(("a",), (3,)) == (3,), "unset: as today"


def test_latency_is_an_average_of_first_bytes_that_decays_while_a_provider_answers_nothing(clock):
    states = health(clock)
    assert states.expected_latency("a") is None
    assert states.faster_first(["a", "b"]) == ["a", "b"], "neither measured: the weighted draw stands"
    states.observe_latency("a", 1.0)
    assert states.expected_latency("a") == 1.0
    assert states.faster_first(["a", "b"]) == ["b", "a"], "a member never measured is tried (and so measured)"
    states.observe_latency("b", 0.1)
    assert states.faster_first(["a", "b", "c"]) == ["b", "a", "c"], "of the first two, the faster first; the rest as drawn"
    states.observe_latency("a", 0.0)
    assert states.expected_latency("a") == pytest.approx(0.7), "each answer is 30% of the average"
    clock.now += 10
    assert states.expected_latency("a") == pytest.approx(0.7 / 2.718281828, rel=1e-6), "left aside, it decays (10 s to 1/e)"
    for _ in range(20):  # b takes the traffic, answering in 0.1 s each second; a answers nothing
        clock.now += 1
        states.observe_latency("b", 0.1)
    assert states.faster_first(["b", "a"]) == ["a", "b"], "a slow member left aside long enough (~20 s here) is tried again"
