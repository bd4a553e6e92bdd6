"""Providers change while one gateway keeps running: every step is checked by real requests."""

import os
import threading
import time

import yaml
from prometheus_client.parser import text_string_to_metric_families

from .harness import chat, gateway_config, provider, wait_for

GPT4 = "openai/gpt-4"
MINI = "openai/gpt-4o-mini"


def ask(gw, model: str = GPT4):
    return chat(gw.port, {"model": model, "messages": [{"role": "user", "content": "hi"}]})


def reloads(gw, result: str = "success") -> float:
    return gw.metric("extproc_config_reloads_total", result=result) or 0.0


def apply(gw, config, result: str = "success") -> None:
    """Write the config and wait (by polling, not sleeping) until the reload is done."""
    before = reloads(gw, result)
    gw.write_config(config)
    deadline = time.monotonic() + 15
    while reloads(gw, result) <= before:
        assert time.monotonic() < deadline, f"no {result} reload within 15s:\n{gw.logs()[-3000:]}"
        time.sleep(0.02)


def provider_series(gw) -> set[tuple[str, str, str]]:
    """(provider, model, state) of every provider, from the extproc_provider_state series at 1."""
    return {
        (sample.labels["provider"], sample.labels["model"], sample.labels["state"])
        for family in text_string_to_metric_families(gw.get("/metrics").body.decode())
        if family.name == "extproc_provider_state"
        for sample in family.samples
        if sample.value == 1
    }


def provider_statuses(gw) -> dict[str, str]:
    return {name: status for name, _, status in provider_series(gw)}


def test_provider_crud_sequence_on_a_running_gateway(mocks, gateway):
    first, second, third = mocks.start("first"), mocks.start("second"), mocks.start("third")
    gw = gateway(gateway_config())
    assert ask(gw).status == 404

    # create
    apply(gw, gateway_config(provider("p1", GPT4, first, access_key="key-1")))
    answer = ask(gw)
    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "p1"
    assert first.received[-1].header("authorization") == "Bearer key-1"

    # rename: routed under the new name; the old name's series is gone
    apply(gw, gateway_config(provider("p1-renamed", GPT4, first, access_key="key-1")))
    answer = ask(gw)
    assert answer.headers["x-arch-llm-provider"] == "p1-renamed"
    assert first.received[-1].header("authorization") == "Bearer key-1"
    assert provider_statuses(gw) == {"p1-renamed": "enabled"}

    # move to another base URL, with a rotated key: the old upstream gets nothing more
    served_by_first = len(first.received)
    apply(gw, gateway_config(provider("p1-renamed", GPT4, second, access_key="key-2")))
    for _ in range(3):
        assert ask(gw).status == 200
    assert len(first.received) == served_by_first
    assert len(second.received) == 3 and second.received[-1].header("authorization") == "Bearer key-2"

    # add a second model
    apply(gw, gateway_config(provider("p1-renamed", GPT4, second, access_key="key-2"), provider("mini", MINI, third)))
    assert ask(gw, MINI).headers["x-arch-llm-provider"] == "mini"
    assert third.received[-1].json()["model"] == "gpt-4o-mini"
    assert ask(gw).headers["x-arch-llm-provider"] == "p1-renamed"

    # delete one
    apply(gw, gateway_config(provider("p1-renamed", GPT4, second, access_key="key-2")))
    answer = ask(gw, MINI)
    assert answer.status == 404 and answer.json()["error"]["code"] == "model_not_found"
    assert ask(gw).status == 200

    # delete all: fail closed, nothing forwarded
    forwarded = sum(len(mock.received) for mock in (first, second, third))
    apply(gw, gateway_config())
    answer = ask(gw)
    assert answer.status == 404 and answer.json()["error"]["code"] == "model_not_found"
    assert sum(len(mock.received) for mock in (first, second, third)) == forwarded
    assert provider_statuses(gw) == {}

    # recreate
    apply(gw, gateway_config(provider("p1", GPT4, first)))
    assert ask(gw).headers["x-arch-llm-provider"] == "p1"


def test_a_broken_file_keeps_the_previous_snapshot_and_says_so(mocks, gateway):
    main = mocks.start("main")
    gw = gateway(gateway_config(provider("main", GPT4, main)))

    apply(gw, "listeners: [\n  this is not yaml", result="failure")
    assert ask(gw).status == 200
    apply(gw, gateway_config(provider("main", GPT4, main, access_key="$UNSET_VARIABLE_FOR_TEST")), result="failure")
    answer = ask(gw)
    assert answer.status == 200 and main.received[-1].header("authorization") is None

    assert reloads(gw, "failure") == 2
    assert gw.metric("extproc_config_last_reload_success_timestamp_seconds") < gw.metric("extproc_config_last_reload_timestamp_seconds")
    assert "UNSET_VARIABLE_FOR_TEST" in gw.logs() and "model_providers[0].access_key" in gw.logs()


def test_one_invalid_entry_refuses_the_reload_and_the_previous_snapshot_keeps_every_model(mocks, gateway):
    main, other = mocks.start("main"), mocks.start("other")
    gw = gateway(gateway_config(provider("main", GPT4, main), provider("ok", "mistral/large", other)))
    assert ask(gw, "mistral/large").headers["x-arch-llm-provider"] == "ok"

    # A typo in an entry that was serving, and a new model beside it.
    apply(gw, gateway_config(provider("main", GPT4, main), provider("ok", "mistral/large", other, weight=0), provider("new", MINI, other)), result="failure")

    assert ask(gw, "mistral/large").headers["x-arch-llm-provider"] == "ok", "the model the typo would have dropped still serves"
    assert ask(gw, MINI).status == 404, "nothing of the refused file applies"
    assert reloads(gw, "failure") == 1 and reloads(gw, "success") == 0
    assert "model_providers[1].weight" in gw.logs() and "still serving the previous config" in gw.logs()
    assert provider_series(gw) == {("main", GPT4, "enabled"), ("ok", "mistral/large", "enabled")}


def test_a_request_in_flight_during_a_reload_completes(mocks, gateway):
    slow = mocks.start("slow", delay_s=1.5)
    other = mocks.start("other")
    gw = gateway(gateway_config(provider("slow", GPT4, slow)))
    results = []
    worker = threading.Thread(target=lambda: results.append(ask(gw)))
    worker.start()
    wait_for(lambda: slow.received)

    apply(gw, gateway_config(provider("fast", GPT4, other)))
    assert ask(gw).headers["x-arch-llm-provider"] == "fast"
    worker.join(10)

    assert results[0].status == 200
    assert results[0].headers["x-arch-llm-provider"] == "slow"


def test_a_configmap_style_symlink_swap_is_noticed(mocks, gateway, tmp_path):
    first, second = mocks.start("first"), mocks.start("second")
    gw = gateway(gateway_config(provider("p", GPT4, first)))
    # Kubernetes mounts config.yaml -> ..data/config.yaml and swaps the ..data symlink.
    for index, mock in enumerate((first, second)):
        version = tmp_path / f"v{index}"
        version.mkdir()
        (version / "config.yaml").write_text(yaml.safe_dump(gateway_config(provider("p", GPT4, mock))))
    data_link = os.path.join(os.path.dirname(gw.config_path), "..data")
    os.symlink(tmp_path / "v0", data_link)
    before = reloads(gw) + reloads(gw, "unchanged")
    os.replace(gw.config_path, gw.config_path + ".orig")
    os.symlink(os.path.join("..data", "config.yaml"), gw.config_path)
    wait_for(lambda: reloads(gw) + reloads(gw, "unchanged") > before, timeout=15)

    temporary = data_link + ".new"
    os.symlink(tmp_path / "v1", temporary)
    before = reloads(gw)
    os.replace(temporary, data_link)
    wait_for(lambda: reloads(gw) > before, timeout=15)
    ask(gw)
    assert second.received, "the swapped-in config routes to the second upstream"


def test_post_reload_and_sighup_reload_on_demand(mocks, gateway):
    import signal as signals

    from .harness import request

    first, second = mocks.start("first"), mocks.start("second")
    gw = gateway(gateway_config(provider("p", GPT4, first)))
    answer = request(gw.metrics_port, "POST", "/reload")
    assert answer.status == 200 and answer.json() == {"reloaded": True, "message": "unchanged"}

    # Change the file without the watcher being the one to notice first: SIGHUP reloads it now.
    before = reloads(gw)
    gw.write_config(gateway_config(provider("p", GPT4, second)))
    gw.process.send_signal(signals.SIGHUP)
    wait_for(lambda: reloads(gw) > before, timeout=15)
    ask(gw)
    assert second.received

    with open(gw.config_path, "w") as handle:
        handle.write("model_providers: {broken")
    answer = request(gw.metrics_port, "POST", "/reload")
    assert answer.status == 422
    assert answer.json()["reloaded"] is False and "not valid YAML" in answer.json()["message"]


def test_listener_changes_wait_for_a_restart_and_cooldowns_survive_reloads(mocks, gateway):
    limited, backup, extra = mocks.start("limited", status=429, retry_after="60"), mocks.start("backup"), mocks.start("extra")
    config = gateway_config(provider("limited", GPT4, limited), provider("backup", GPT4, backup))
    gw = gateway(config)
    assert ask(gw).headers["x-arch-llm-provider"] == "backup"
    wait_for(lambda: (gw.metric("extproc_provider_cooldown_remaining_seconds", provider="limited") or 0) > 0, timeout=15)

    moved = gateway_config(provider("limited", GPT4, limited), provider("backup", GPT4, backup), provider("extra", MINI, extra))
    moved["listeners"][0]["port"] = 1  # a listener change: needs an Envoy restart
    apply(gw, moved)

    assert "listener changes (name, address or port) need a restart of Envoy" in gw.logs()
    assert ask(gw, MINI).headers["x-arch-llm-provider"] == "extra", "the rest of the reload applied, on the old listener"
    assert ask(gw).headers["x-arch-llm-provider"] == "backup"
    assert len(limited.received) == 1, "the cooldown learned before the reload still holds"


def test_routes_or_clusters_envoy_rejects_leave_the_previous_config_serving(mocks, gateway, tmp_path):
    main = mocks.start("main")
    gw = gateway(gateway_config(provider("main", GPT4, main)))
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("this is not PEM\n")
    rejected = {"name": "secure", "model": MINI, "base_url": "https://localhost:1", "ca_file": str(not_a_certificate)}

    apply(gw, gateway_config(provider("main", GPT4, main), rejected), result="failure")

    assert "Envoy rejected the new CDS resources" in gw.logs()
    assert ask(gw).headers["x-arch-llm-provider"] == "main", "the previous routes and snapshot still serve"
    assert ask(gw, MINI).status == 404, "the sidecar did not switch to the rejected config"
    assert provider_statuses(gw) == {"main": "enabled"}
