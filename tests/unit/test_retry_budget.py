"""Retry budgets without gRPC: the window's counts, the router's decision, the config key."""

import pytest

from extproc.config import ConfigError, parse_config
from extproc.processor import router
from extproc.processor.retrybudget import MIN_RETRIES_PER_S, WINDOW_S, RetryBudgets

FLOOR = MIN_RETRIES_PER_S * WINDOW_S


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_retries_stay_within_the_share_of_requests_above_the_floor():
    clock = Clock()
    budgets = RetryBudgets(clock)
    allowed = 0
    for _ in range(1000):  # an outage: every request fails over while it may
        if budgets.request("m", 20):
            budgets.retried("m")
            allowed += 1
    assert allowed == 200, "20% of 1,000 requests"
    assert budgets.request("other", 20), "each model has its own budget"


def test_a_quiet_model_always_fails_over_up_to_the_floor():
    budgets = RetryBudgets(Clock())
    results = []
    for _ in range(FLOOR + 5):
        results.append(budgets.request("m", 10))
        budgets.retried("m")
    assert results == [True] * FLOOR + [False] * 5


def test_the_window_forgets_what_is_older_than_ten_seconds():
    clock = Clock()
    budgets = RetryBudgets(clock)
    for _ in range(FLOOR):
        budgets.retried("m")
    assert not budgets.request("m", 20)
    clock.now += WINDOW_S - 1
    assert not budgets.request("m", 20), "still within the window"
    clock.now += 1.5
    assert budgets.request("m", 20), "the retries have left the window"


BASE = """
listeners: [{type: model, port: 0}]
model_providers:
  - {name: a, model: openai/m, base_url: 'http://a', access_key: ka, retry_policy: {retry_budget: 20%}}
  - {name: b, model: openai/m, base_url: 'http://b', access_key: kb}
  - {name: c, model: openai/plain, base_url: 'http://c', access_key: kc}
"""


def test_a_request_over_budget_goes_with_no_retries_and_is_never_answered_from_a_kept_decision():
    config = parse_config(BASE, "t.yaml", {})
    listener = config.listeners[0]
    budgets = RetryBudgets(Clock())
    for _ in range(FLOOR):
        budgets.retried("openai/m")
    headers = {":path": "/v1/chat/completions", ":method": "POST"}

    over = router.on_body(config, listener, headers, b'{"model": "openai/m"}', budgets=budgets)
    plain = router.on_body(config, listener, headers, b'{"model": "openai/plain"}', budgets=budgets)

    assert isinstance(over, router.Forward) and over.over_budget and not over.reusable
    assert dict(over.headers.set)[router.MAX_RETRIES_HEADER] == "0"
    assert over.context.model == "openai/m", "its retries (none here) count against its model"
    assert isinstance(plain, router.Forward) and not plain.over_budget and plain.context.model is None
    assert router.MAX_RETRIES_HEADER not in dict(plain.headers.set)


@pytest.mark.parametrize(("value", "percent"), [("20%", 20.0), (" 5 % ", 5.0), (50, 50.0), (12.5, 12.5)])
def test_the_budget_is_a_percentage(value, percent):
    config = parse_config(BASE.replace("retry_budget: 20%", f"retry_budget: {value!r}" if isinstance(value, str) else f"retry_budget: {value}"), "t.yaml", {})
    assert config.chains["a"].policy.retry_budget == percent


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("{retry_budget: 0%}", "expected a percentage between 1% and 100%, like 20%, got '0%'"),
        ("{retry_budget: lots}", "expected a percentage between 1% and 100%, like 20%, got 'lots'"),
        ("{retry_budget: 20%, max_attempts: 1}", "retry_budget has nothing to limit with max_attempts: 1 (no request is retried)"),
    ],
)
def test_a_budget_that_makes_no_sense_is_refused_naming_the_key(policy, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE.replace("{retry_budget: 20%}", policy), "t.yaml", {})
    assert message in str(caught.value) and "model_providers[0].retry_policy" in str(caught.value)


def test_check_prints_the_budget_on_the_models_chain(tmp_path, capsys):
    from extproc.cli import main

    path = tmp_path / "gw.yaml"
    path.write_text(BASE)
    assert main(["check", str(path)]) == 0
    assert "a -> b; retry budget 20%" in capsys.readouterr().out
