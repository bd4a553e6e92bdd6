"""Which answers count as what: the one declaration, and what Envoy's config and the sidecar derive from it."""

from extproc.statuses import WATCHED_REGEX, moves_state, retried, succeeded, watched


def test_envoys_watch_shows_the_sidecar_exactly_the_answers_that_move_a_providers_state():
    assert [status for status in range(100, 600) if watched(status)] == [status for status in range(100, 600) if moves_state(status)]
    assert [status for status in (200, 400, 401, 403, 404, 429, 500, 503, 529) if moves_state(status)] == [401, 403, 429, 500, 503, 529]
    assert "429" in WATCHED_REGEX.split("|")


def test_a_chain_fails_over_on_529_wherever_on_429_and_on_a_refused_key_only_when_the_key_is_the_gateways():
    assert retried((429, 503), owns_keys=True) == [429, 503, 529, 401, 403]
    assert retried((429,), owns_keys=False) == [429, 529], "a client's own credential refused never moves to the gateway's key"
    assert retried((503,), owns_keys=False) == [503]
    assert retried((), owns_keys=True) == [401, 403]


def test_an_attempt_without_an_answer_failed_and_one_below_400_succeeded():
    assert [status for status in (0, 100, 200, 304, 399, 400, 429, 599) if succeeded(status)] == [100, 200, 304, 399]
