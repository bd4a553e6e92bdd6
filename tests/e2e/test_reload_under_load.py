"""Reloads while clients keep sending: no key reaches a wrong host, no request fails because of a reload.

Names of Envoy clusters change whenever what they stand for changes, so a
reload never repoints a cluster in place (see `extproc/xds.py`): these tests
move providers between hosts and reorder chains under 8–32 clients and count
what every host received and what every client got.
"""

import concurrent.futures
import time

from extproc import envoyadmin

from .harness import Load, gateway_config, provider, request, wait_for
from .test_reload import GPT4, apply, reloads

PAYLOAD = {"model": GPT4, "messages": [{"role": "user", "content": "hi"}]}


def test_a_provider_moving_between_hosts_never_sends_either_host_the_others_key(mocks, gateway):
    host_a, host_b = mocks.start("host-a"), mocks.start("host-b")
    at_a = gateway_config(provider("p", GPT4, host_a, access_key="key-A"))
    at_b = gateway_config(provider("p", GPT4, host_b, access_key="key-B"))
    gw = gateway(at_a)

    with Load(gw.port, PAYLOAD, clients=8) as load:
        deadline = time.monotonic() + 10
        moves = 0
        while time.monotonic() < deadline:
            moves += 1
            gw.write_config(at_b if moves % 2 else at_a)
            time.sleep(0.7)

    assert moves >= 12 and reloads(gw) >= 10, f"{moves} moves, {reloads(gw)} reloads"
    assert load.failures == [], load.failures[:5]
    keys_a = {request.header("authorization") for request in host_a.received}
    keys_b = {request.header("authorization") for request in host_b.received}
    assert keys_a == {"Bearer key-A"} and keys_b == {"Bearer key-B"}, (keys_a, keys_b)
    assert len(host_a.received) > 50 and len(host_b.received) > 50, "both hosts served through the whole run"


def test_chains_that_grow_shrink_and_reorder_under_load_fail_no_request(mocks, gateway):
    limited = mocks.start("limited", status=429)  # every request fails over from here
    b, c, d = mocks.start("b"), mocks.start("c"), mocks.start("d")
    members = [[b], [b, c], [c], [c, b], [b, c, d], [d, b], [d]]

    def config(backups):
        entries = [provider("limited", GPT4, limited)] + [provider(mock.name, GPT4, mock) for mock in backups]
        return {**gateway_config(*entries), "cooldown": {"enabled": False}}

    gw = gateway(config([c, d]))
    with Load(gw.port, PAYLOAD, clients=16) as load:
        for step in range(25):
            apply(gw, config(members[step % len(members)]))

    assert reloads(gw) == 25
    assert load.failures == [], f"{len(load.failures)} of {len(load.statuses)} failed: {load.failures[:3]}"
    assert len(load.statuses) > 200
    assert len(limited.received) == len(load.statuses), "every request started on the chain's first provider"


def test_a_flood_of_reload_triggers_loads_a_changed_file_once_and_traffic_goes_on(mocks, gateway):
    first, second = mocks.start("first"), mocks.start("second")
    gw = gateway(gateway_config(provider("p", GPT4, first)))

    def flood() -> list[int]:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            return [answer.status for answer in pool.map(lambda _: request(gw.metrics_port, "POST", "/reload"), range(300))]

    with Load(gw.port, PAYLOAD, clients=8) as load:
        assert set(flood()) == {200}
        assert reloads(gw) == 0, "an unchanged file loads nothing"
        gw.write_config(gateway_config(provider("p", GPT4, second)))
        assert set(flood()) == {200}
        wait_for(lambda: second.received)
    assert reloads(gw) == 1 and reloads(gw, "failure") == 0, "one change, one reload, however many triggers"
    assert load.failures == [] and len(load.statuses) > 50


def test_a_retired_snapshots_clusters_leave_envoy_once_no_request_can_use_them(mocks, gateway):
    first, second = mocks.start("first"), mocks.start("second")
    short = {"timeout": "1s"}
    gw = gateway(gateway_config(provider("p", GPT4, first), **short))
    old = clusters(gw)
    apply(gw, gateway_config(provider("p", GPT4, second), **short))
    assert old < clusters(gw), "the previous clusters stay beside the new ones"
    wait_for(lambda: not (old & clusters(gw)), timeout=20)
    answer = request(gw.port, "POST", "/v1/chat/completions", b'{"model": "openai/gpt-4"}')
    assert answer.status == 200 and second.received


def clusters(gw) -> set[str]:
    """The provider and chain clusters Envoy has now."""
    return {name for name in envoyadmin.cluster_names(gw.admin_url) if name.startswith(("provider.", "chain."))}
