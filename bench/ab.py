"""This code against an earlier revision, in one run: c=1 and c=64 through each, beside Envoy alone and the floor.

On a shared VM the machine's speed drifts by a third within an hour, so two
`make bench` runs an hour apart cannot say whether a change paid; this runs
both codes in the same minutes, interleaved. The earlier revision is checked
out into a temporary git worktree and started with `extproc up` from there
(its own rendering, its own sidecar); both gateways get the same one-provider
config on the fixed upstream (`bench/ok`). Each round drives Envoy alone, the
floor (`floor.py`), the earlier code and this code with wrk at 1 and 64
connections; the medians over the rounds are printed, with this code's c=64
req/s as a multiple of the earlier code's and a share of the floor's.

    make bench-ab REV=93d2a78     # or: python bench/ab.py 93d2a78 --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.floor import envoy_with_bare_ext_proc
from bench.run import COMPLETION, Processes, ensure_wrk, measured, post, static_proxy, wrk
from tests.e2e.harness import free_port, wait_port


def worktree(revision: str, directory: str) -> str:
    """`revision` checked out (detached) under `directory`; the caller removes it with `remove_worktree`."""
    path = os.path.join(directory, "previous")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "--quiet", path, revision], check=True)
    return path


def remove_worktree(path: str) -> None:
    subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revision", help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="duration of each wrk run")
    args = parser.parse_args()
    binary = ensure_wrk()
    with Processes("extproc-ab-") as processes:
        previous_root = worktree(args.revision, processes.workdir)
        try:
            compare(processes, binary, previous_root, args)
        finally:
            processes.stop()
            remove_worktree(previous_root)


def compare(processes: Processes, binary: str, previous_root: str, args: argparse.Namespace) -> None:
    upstream = processes.fixed_upstream(200, COMPLETION)
    config = {
        "listeners": [{"type": "model", "name": "bench", "address": "127.0.0.1", "port": 0}],
        "model_providers": [{"name": "ok", "model": "bench/ok", "base_url": f"http://127.0.0.1:{upstream}", "access_key": "bench-key"}],
    }
    alone_port, floor_port = free_port(), free_port()
    processes.envoy("alone", static_proxy(alone_port, upstream))
    floor_socket = os.path.join(processes.workdir, "floor.sock")
    floor = processes.spawn([sys.executable, os.path.join(ROOT, "bench", "floor.py"), floor_socket])
    processes.envoy("floor", envoy_with_bare_ext_proc(static_proxy(floor_port, upstream), floor_socket))
    previous, previous_port = processes.gateway(config, root=previous_root)
    current, current_port = processes.gateway(config)
    paths = (
        ("Envoy alone", alone_port, None),
        ("floor", floor_port, floor.pid),
        (f"previous ({args.revision})", previous_port, previous.pid),
        ("this code", current_port, current.pid),
    )
    for _, port, _ in paths:
        wait_port(port)
        deadline = time.monotonic() + 30
        while post(port, "bench/ok") != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"port {port} never answered 200")
            time.sleep(0.05)
    results: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.rounds):
        for label, port, pid in paths:
            for connections in (1, 64):
                run = functools.partial(wrk, binary, port, connections, args.seconds, "bench/ok", processes.workdir)
                results.setdefault((label, connections), []).append(measured(pid, run))
    report(results, [label for label, _, _ in paths], args.rounds)


def report(results: dict[tuple[str, int], list[dict]], labels: list[str], rounds: int) -> None:
    def median(label: str, connections: int, key: str) -> float:
        return statistics.median(result[key] for result in results[label, connections])

    print(f"\nmedians of {rounds} interleaved rounds; Envoy --concurrency 1 everywhere; wrk -t1")
    print(f"{'path':28} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50 added':>10} {'CPU/req':>9} {'non-2xx':>8}  each round's req/s")
    for connections in (1, 64):
        for label in labels:
            cpu = f"{median(label, connections, 'cpu_us'):.0f} us" if results[label, connections][0]["cpu_us"] is not None else ""
            errors = sum(result["non2xx"] + result["socket_errors"] for result in results[label, connections])
            each = " / ".join(f"{result['rps']:.0f}" for result in results[label, connections])
            added = median(label, connections, "p50") - median(labels[0], connections, "p50")
            print(
                f"{label:28} {connections:>3} {median(label, connections, 'rps'):>8.0f} {median(label, connections, 'p50'):>8.2f}"
                f" {median(label, connections, 'p99'):>8.2f} {added:>+10.2f} {cpu:>9} {errors:>8}  {each}"
            )
    previous, current = labels[2], labels[3]
    print(
        f"\nthis code at c=64: {median(current, 64, 'rps') / median(previous, 64, 'rps'):.2f}x the previous code's req/s,"
        f" {median(current, 64, 'rps') / median('floor', 64, 'rps'):.0%} of the floor's;"
        f" CPU/request {median(current, 64, 'cpu_us'):.0f} us against {median(previous, 64, 'cpu_us'):.0f} us"
    )


if __name__ == "__main__":
    main()
