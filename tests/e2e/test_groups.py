"""Priority groups with weights, through real Envoy: traffic shared by weight, a member's 429 served by its group, then the next group."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

from .harness import chat, gateway_config, provider, wait_for

HELLO = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_a_group_shares_its_traffic_by_weight(mocks, gateway):
    heavy, light, backup = mocks.start("heavy"), mocks.start("light"), mocks.start("backup")
    gw = gateway(
        gateway_config(
            provider("heavy", "openai/gpt-4o", heavy, access_key="k-heavy", priority=0, weight=3),
            provider("light", "openai/gpt-4o", light, access_key="k-light", priority=0, weight=1),
            provider("backup", "openai/gpt-4o", backup, access_key="k-backup", priority=1),
        )
    )

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: chat(gw.port, HELLO).status, range(400)))

    assert statuses == [200] * 400
    # 3:1 of 400 is 300:100; the binomial's standard deviation is 8.7, so ±50 fails once in ~10^8 runs, not by chance.
    assert 250 <= heavy.served <= 350 and heavy.served + light.served == 400, (heavy.served, light.served)
    assert not backup.served, "the next group takes nothing while this one answers"
    assert {request.header("authorization") for request in light.received} == {"Bearer k-light"}, "each member its own key"


def limited_group(mocks, gateway, limited_weight: int = 1, **listener):
    """gpt-4o: a group of a rate-limited member and a healthy one, then a backup group; (limited, healthy, backup, gateway)."""
    limited, healthy, backup = mocks.start("limited", status=429, retry_after="30"), mocks.start("healthy"), mocks.start("backup")
    gw = gateway(
        gateway_config(
            provider("limited", "openai/gpt-4o", limited, access_key="k1", priority=0, weight=limited_weight),
            provider("healthy", "openai/gpt-4o", healthy, access_key="k2", priority=0, weight=1),
            provider("backup", "openai/gpt-4o", backup, access_key="k3", priority=1),
            **listener,
        )
    )
    return limited, healthy, backup, gw


def test_a_members_429_is_served_by_its_group_and_a_cooling_group_hands_over_to_the_next(mocks, gateway):
    limited, healthy, backup, gw = limited_group(mocks, gateway)

    answers = [chat(gw.port, HELLO) for _ in range(20)]

    assert {answer.status for answer in answers} == {200}
    assert {answer.headers["x-arch-llm-provider"] for answer in answers} == {"healthy"}, "the other member, not the next group"
    assert limited.served <= 1, "its 429 cooled it: the group's other member takes its share"
    assert not backup.served

    healthy.status, healthy.retry_after = 429, "30"  # now the whole group is rate limited
    first = chat(gw.port, HELLO)
    after = [chat(gw.port, HELLO) for _ in range(5)]

    assert first.status == 200 and first.headers["x-arch-llm-provider"] == "backup", "the next group answers the request that found the group limited"
    assert {answer.headers["x-arch-llm-provider"] for answer in after} == {"backup"}
    assert healthy.served == 21, "once cooling, the group is not tried again"


def test_metrics_and_the_access_log_name_the_group_and_the_member_that_answered(mocks, gateway):
    _, _, _, gw = limited_group(mocks, gateway, limited_weight=2, access_log=True)

    answers = [chat(gw.port, HELLO) for _ in range(6)]

    assert {answer.headers["x-arch-llm-provider"] for answer in answers} == {"healthy"}
    assert gw.metric("extproc_provider_group_info", provider="limited", group="openai/gpt-4o#1", weight="2") == 1
    assert gw.metric("extproc_provider_group_info", provider="healthy", group="openai/gpt-4o#1", weight="1") == 1
    assert gw.metric("extproc_provider_group_info", provider="backup", group="openai/gpt-4o#2", weight="1") == 1
    gw.stop()
    lines = [json.loads(line) for line in gw.process_output.splitlines() if line.startswith("{")]
    served = {(line["group"], line["provider"]) for line in lines if line["path"].startswith("/v1/chat/completions")}
    assert served == {("openai/gpt-4o#1", "healthy")}


def test_a_member_whose_key_is_revoked_fails_over_inside_its_group_and_cools_at_once(mocks, gateway):
    heavy, revoked = mocks.start("heavy"), mocks.start("revoked", status=401)
    gw = gateway(
        gateway_config(
            provider("heavy", "openai/gpt-4o", heavy, access_key="k-heavy", priority=0, weight=3),
            provider("revoked", "openai/gpt-4o", revoked, access_key="k-revoked", priority=0, weight=1),
        )
    )

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: chat(gw.port, HELLO), range(400)))

    assert [answer.status for answer in answers] == [200] * 400, "no client sees the revoked key's 401"
    assert revoked.served <= 16, f"its first 401 cooled it (one per request already on its way): {revoked.served} of 400"
    assert gw.metric("extproc_provider_cooldowns_total", provider="revoked", reason="auth_failed") >= 1
    assert gw.metric("extproc_provider_state", provider="revoked", model="openai/gpt-4o", state="cooling_down") == 1
    assert {request.header("authorization") for request in heavy.received} == {"Bearer k-heavy"}, "the failover carried heavy's own key"


def test_a_member_back_from_a_cooldown_takes_its_share_gradually_with_slow_start(mocks, gateway):
    back, steady = mocks.start("back", status=429, retry_after="1"), mocks.start("steady")
    config = gateway_config(
        provider("back", "openai/gpt-4o", back, access_key="k-back", priority=0, weight=1),
        provider("steady", "openai/gpt-4o", steady, access_key="k-steady", priority=0, weight=1),
    )
    gw = gateway({**config, "cooldown": {"slow_start": "4s"}})

    def wave(count: int) -> list[str]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: chat(gw.port, HELLO).headers["x-arch-llm-provider"], range(count)))

    wait_for(lambda: chat(gw.port, HELLO).status == 200 and back.served, timeout=10)  # its 429 cools it for 1 s
    back.status, back.retry_after = 200, None
    wait_for(lambda: chat(gw.port, HELLO).headers["x-arch-llm-provider"] == "back", timeout=10)  # its trial, once the cooldown ends
    ramping = wave(100)
    time.sleep(4)  # the slow start's window: the behaviour under test is a matter of time
    settled = wave(200)

    # Equal weights share 50:50; back starts at a tenth of its weight (~9%) and reaches ~12% of it within a
    # fast wave (~20% if the wave takes 2 s): 30 of 100 is far above either.
    assert ramping.count("back") < 30, ramping.count("back")
    assert 60 <= settled.count("back") <= 140, settled.count("back")


def test_a_session_stays_on_its_member_and_only_a_cooling_members_sessions_move_and_come_back(mocks, gateway):
    members = {name: mocks.start(name) for name in ("m1", "m2", "m3")}
    config = gateway_config(
        *(provider(name, "openai/gpt-4o", mock, access_key=f"k-{name}", priority=0) for name, mock in members.items()),
    )
    config["model_providers"][0]["routing"] = {"affinity": {"header": "x-session-id"}}
    gw = gateway(config)
    sessions = [f"user-{index}" for index in range(30)]

    def served(session: str) -> str:
        answer = chat(gw.port, HELLO, {"x-session-id": session})
        assert answer.status == 200
        return answer.headers["x-arch-llm-provider"]

    home = {session: served(session) for session in sessions}
    assert all(served(session) == home[session] for session in sessions for _ in range(2)), "every request of a session on one member"
    assert len(set(home.values())) == 3, "sessions spread over the group"
    request = members["m1"].received[-1]
    assert request.header("x-session-id") is not None, "the session header reaches the provider as the client sent it"

    members["m1"].status, members["m1"].retry_after = 429, "1"
    on_m1 = [session for session in sessions if home[session] == "m1"]
    chat(gw.port, HELLO, {"x-session-id": on_m1[0]})  # m1 answers 429: it cools, this request fails over inside the group
    moved = {session: served(session) for session in sessions}
    assert all(moved[session] == home[session] for session in sessions if home[session] != "m1"), "the other members' sessions stay"
    assert all(moved[session] != "m1" for session in on_m1)

    members["m1"].status, members["m1"].retry_after = 200, None
    wait_for(lambda: served(on_m1[0]) == "m1", timeout=10)  # its cooldown ends: this request is its trial
    # The trial's success is known when its log entry arrives (batched, ~20 ms after its answer); until then
    # m1's other sessions start elsewhere, as every request does while a provider is on trial (docs/config.md).
    wait_for(lambda: all(served(session) == "m1" for session in on_m1), timeout=5)
    assert {session: served(session) for session in sessions} == home, "m1's sessions come back to it, the others never moved"


def test_latency_routing_sends_a_group_to_its_faster_member_and_follows_when_it_turns_slow(mocks, gateway):
    quick, slow = mocks.start("quick"), mocks.start("slow")
    slow.delay_s = 0.2
    config = gateway_config(
        provider("quick", "openai/gpt-4o", quick, access_key="k-quick", priority=0),
        provider("slow", "openai/gpt-4o", slow, access_key="k-slow", priority=0),
    )
    config["model_providers"][1]["routing"] = {"strategy": "latency"}
    gw = gateway(config)

    def answered_by(count: int) -> list[str]:
        return [chat(gw.port, HELLO).headers["x-arch-llm-provider"] for _ in range(count)]

    answered_by(10)  # each member's first answers measure it
    with ThreadPoolExecutor(8) as pool:
        wave = list(pool.map(lambda _: chat(gw.port, HELLO).headers["x-arch-llm-provider"], range(100)))
    assert wave.count("quick") >= 90, "weighted alike, yet the faster member takes nearly all (50:50 without the strategy)"
    assert gw.metric("extproc_provider_latency_seconds", provider="slow") >= 0.1 > gw.metric("extproc_provider_latency_seconds", provider="quick")

    quick.delay_s, slow.delay_s = 0.2, 0.0  # the fast one turns slow
    answered_by(10)  # a few of its slow answers raise its average past the other's
    assert answered_by(30).count("slow") >= 25, "the member that turned slow lost its traffic within seconds"
