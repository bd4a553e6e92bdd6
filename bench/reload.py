"""Time from writing a new config file to the first request routed by it (`extproc up`).

Each round renames the provider and points it at the other mock, then polls
the gateway until a response names the new provider. Prints median and max.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.e2e.harness import GatewayProcess, MockServers, chat, gateway_config, provider

ROUNDS = 10


def main() -> None:
    mocks = MockServers()
    upstreams = [mocks.start("a"), mocks.start("b")]
    with tempfile.TemporaryDirectory() as directory:
        gateway = GatewayProcess(gateway_config(provider("p0", "openai/gpt-4", upstreams[0])), directory)
        try:
            timings = []
            for round_ in range(1, ROUNDS + 1):
                name = f"p{round_}"
                started = time.monotonic()
                gateway.write_config(gateway_config(provider(name, "openai/gpt-4", upstreams[round_ % 2])))
                while chat(gateway.port, {"model": "openai/gpt-4"}).headers.get("x-arch-llm-provider") != name:
                    time.sleep(0.005)
                timings.append(time.monotonic() - started)
        finally:
            gateway.stop()
            mocks.close()
    print(f"config write -> new routing, {ROUNDS} rounds: median {statistics.median(timings) * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
