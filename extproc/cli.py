"""The `extproc` command: check, schema, render, serve, up, mock."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
from collections import Counter
from typing import TYPE_CHECKING

from pythonjsonlogger.json import JsonFormatter

from . import __version__, envoyadmin
from .apis import ANTHROPIC_MESSAGES, BEDROCK_CONVERSE
from .config import Chain, Config, ConfigError, Listener, json_schema, load_config
from .preflight import EXIT_DOWN, preflight
from .render import RenderOptions, SidecarTls, heap_budget_mb, render_yaml
from .server.app import ListenError, ServerTls, check_listen
from .sidecar import Sidecar
from .supervisor import Gateway, GatewayError, install_signal_handlers, print_line
from .translator import OPENAI_CHAT, provider_api
from .xds import XdsFiles

if TYPE_CHECKING:  # the mock providers load only for `mock` and `up --mock-providers`: never in a sidecar
    from .mock import MockProvider

log = logging.getLogger("extproc")


class UsageError(Exception):
    """Options that do not go together; the message says what to pass instead."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.log_level not in LOG_LEVELS or args.log_format not in LOG_FORMATS:
        parser.error(f"log level {args.log_level!r} / format {args.log_format!r}: use one of {', '.join(LOG_LEVELS)} / {', '.join(LOG_FORMATS)} (also in EXTPROC_LOG_LEVEL, EXTPROC_LOG_FORMAT)")
    _configure_logging(args.log_level, args.log_format)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (GatewayError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")


def _configure_logging(level: str, log_format: str) -> None:
    """One line per record on stderr: JSON with stable field names (time, level, logger, message, request_id when known, exc_info), or text."""
    handler = logging.StreamHandler()
    handler.setFormatter(log_formatter(log_format))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)


def log_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        renamed = {"asctime": "time", "levelname": "level", "name": "logger"}
        return JsonFormatter("{asctime}{levelname}{name}{message}", style="{", rename_fields=renamed, datefmt="%Y-%m-%dT%H:%M:%S%z")
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """Options every command takes, before or after its name; EXTPROC_LOG_LEVEL and EXTPROC_LOG_FORMAT set their defaults."""
    options = argparse.ArgumentParser(add_help=False)
    level = os.environ.get("EXTPROC_LOG_LEVEL", "info").lower()
    log_format = os.environ.get("EXTPROC_LOG_FORMAT", "text" if sys.stderr.isatty() else "json").lower()
    # After the command, an option left out must not overwrite what was given before it.
    options.add_argument("--log-level", choices=LOG_LEVELS, default=level if defaults else argparse.SUPPRESS, help="default: $EXTPROC_LOG_LEVEL, else info")
    options.add_argument("--log-format", choices=LOG_FORMATS, default=log_format if defaults else argparse.SUPPRESS, help="default: $EXTPROC_LOG_FORMAT, else json unless stderr is a terminal")
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extproc", description="Envoy LLM gateway sidecar: route by model, fail over on 429.", parents=[_global_options(True)])
    parser.add_argument("--version", action="version", version=f"extproc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    after = _global_options(False)  # every command takes them too
    _check_command(commands, after)
    _schema_command(commands, after)
    _render_command(commands, after)
    _serve_command(commands, after)
    _up_command(commands, after)
    _preflight_command(commands, after)
    _mock_command(commands, after)
    return parser


def _check_command(commands, after: argparse.ArgumentParser) -> None:
    check = commands.add_parser("check", parents=[after], help="validate a config file; exit 2 with every problem listed")
    check.add_argument("config")
    check.set_defaults(run=_check)


def _schema_command(commands, after: argparse.ArgumentParser) -> None:
    schema = commands.add_parser("schema", parents=[after], help="print the config file's JSON Schema (for editors and CI validation)")
    schema.add_argument("-o", "--output", help="file to write (default: stdout)")
    schema.set_defaults(run=_schema)


def _render_command(commands, after: argparse.ArgumentParser) -> None:
    render = commands.add_parser("render", parents=[after], help="write the Envoy bootstrap for a config")
    render.add_argument("config")
    render.add_argument("-o", "--output", help="file to write (default: stdout)")
    render.add_argument("--sidecar", default="unix:/run/extproc/sidecar.sock", help="where Envoy reaches the sidecar: unix:/path, or host:port (with --sidecar-tls-*)")
    render.add_argument("--admin-port", type=int, default=9901)
    render.add_argument("--admin-address", default="127.0.0.1", help="Envoy's admin address, or unix:/path for a Unix socket")
    render.add_argument("--xds-dir", help="routes and clusters from files `extproc serve --xds-dir` keeps current (default: inline)")
    render.add_argument("--envoy-stats-port", type=int, default=9902, help="a listener serving only Envoy's /stats/prometheus, for scraping (0: none)")
    render.add_argument(
        "--max-heap-mb", type=int, help="Envoy's heap budget: near it Envoy sheds load instead of being OOM-killed (default: 200 + 0.25 per provider; fit it under the container's memory limit)"
    )
    render.add_argument("--sidecar-tls-cert", help="TCP sidecar with mutual TLS: Envoy's client certificate (PEM)")
    render.add_argument("--sidecar-tls-key", help="its private key (PEM)")
    render.add_argument("--sidecar-ca", help="the CA (PEM) the sidecar's server certificate must chain to")
    render.set_defaults(run=_render)


def _serve_command(commands, after: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[after], help="run the sidecar alone (Envoy runs elsewhere, e.g. its own container)")
    serve.add_argument("config")
    serve.add_argument("--listen", default="unix:/run/extproc/sidecar.sock", help="unix:/path (mode 0600), or host:port with mutual TLS (or --insecure-tcp on loopback)")
    serve.add_argument("--tls-cert", help="TCP: the server certificate (PEM) Envoy verifies")
    serve.add_argument("--tls-key", help="TCP: its private key (PEM)")
    serve.add_argument("--client-ca", help="TCP: the CA (PEM) that Envoy's client certificate must chain to; required with --tls-cert")
    serve.add_argument("--reload-token-file", help="a file holding a token: POST /reload then needs `Authorization: Bearer <token>` (default: loopback callers only)")
    serve.add_argument("--insecure-tcp", action="store_true", help="allow plain TCP, on a loopback address only (anyone on the host can then ask for keys)")
    serve.add_argument("--metrics-port", type=int, default=None, help="override the config's metrics port (0: any free port)")
    serve.add_argument("--xds-dir", help="write Envoy's routes and clusters here and keep them current (Envoy rendered with the same --xds-dir)")
    serve.add_argument(
        "--envoy-admin",
        default="",
        help="Envoy's admin address (host:port or unix:/path): confirm each xDS step and roll back what Envoy rejects; without it, rejections go unnoticed",
    )
    serve.set_defaults(run=_serve)


def _up_command(commands, after: argparse.ArgumentParser) -> None:
    up = commands.add_parser("up", parents=[after], help="run Envoy and the sidecar together in the foreground")
    up.add_argument("config")
    up.add_argument("--concurrency", type=int, default=None, help="Envoy worker threads (default: one per core)")
    up.add_argument("--envoy-log-level", default="warning")
    up.add_argument("--drain-time", type=int, default=5, help="on stop, seconds the listeners keep accepting (answering `connection: close`) after readiness turns 503")
    up.add_argument("--drain-timeout", type=float, default=30.0, help="on stop, seconds to let open connections and in-flight requests finish")
    up.add_argument("--metrics-port", type=int, default=None, help="override the config's metrics port (0: any free port)")
    up.add_argument("--reload-token-file", help="a file holding a token: POST /reload then needs `Authorization: Bearer <token>` (default: loopback callers only)")
    up.add_argument(
        "--max-heap-mb", type=int, help="Envoy's heap budget: near it Envoy refuses requests (and /readyz says so) instead of being OOM-killed (default: 200 + 0.25 per provider)"
    )
    up.add_argument("--mock-providers", action="store_true", help="also start mock providers on the config's loopback base URLs (a demo without API keys)")
    up.set_defaults(run=_up)


def _preflight_command(commands, after: argparse.ArgumentParser) -> None:
    preflight = commands.add_parser("preflight", parents=[after], help="probe each provider: UP (any status < 500) or DEP-DOWN; exit 70 if any is down")
    preflight.add_argument("config")
    preflight.add_argument("--timeout", type=float, default=5.0, help="seconds per provider")
    preflight.add_argument("--with-keys", action="store_true", help="send each provider its key (default: unauthenticated)")
    preflight.set_defaults(run=_preflight)


def _mock_command(commands, after: argparse.ArgumentParser) -> None:
    mock = commands.add_parser("mock", parents=[after], help="a mock provider: OpenAI-compatible, or Anthropic's Messages API")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, required=True)
    mock.add_argument("--name", default="mock")
    mock.add_argument("--status", type=int, default=200, help="200 echoes the request as a chat.completion; any other status answers an error")
    mock.add_argument("--retry-after", help="Retry-After header value on error answers")
    mock.add_argument(
        "--api", choices=("openai", "anthropic", "bedrock", "vertex"), default="openai", help="the API it answers (and checks requests) as: OpenAI's, Anthropic's, Bedrock's, Vertex AI's"
    )
    mock.add_argument("--aws-access-key-id", help="bedrock: the key id signatures must use (default: the mock's own test key)")
    mock.add_argument("--aws-secret-access-key", help="bedrock: the secret it checks signatures with (default: the mock's own)")
    mock.add_argument("--aws-region", help="bedrock: the region signatures must be scoped to (default: the mock's own)")
    mock.add_argument("--service-account", help="vertex: a service-account key file; its token endpoint grants tokens for JWTs this key signed")
    mock.add_argument("--chunk-interval", type=float, default=0.05, help="seconds between SSE chunks")
    mock.set_defaults(run=_mock)


def _token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise UsageError(f"--reload-token-file {path}: {exc.strerror}") from None
    if not token:
        raise UsageError(f"--reload-token-file {path} is empty")
    return token


def _load_serving(path: str) -> Config:
    """A running sidecar starts without provider entries that are invalid on their own (logged)."""
    config = load_config(path, lenient=True)
    for error in config.provider_errors:
        log.error("provider %s left out: %s", error.name, error.message)
    for warning in config.warnings:
        log.warning("%s: %s", path, warning)
    return config


def _check(args) -> int:
    config = load_config(args.config)
    print(f"{args.config}: ok")
    if not config.providers:
        print("  warning: no providers: every request will be refused with model_not_found")
    for warning in config.warnings:
        print(f"  warning: {warning}")
    print(f"  Envoy's heap budget: {heap_budget_mb(config)} MiB by default for {len(config.providers)} providers (--max-heap-mb)")
    for listener in config.listeners:
        print(f"  listener {listener.name}: {listener.address}:{listener.port}{_cooling_line(listener)}")
    for model in config.models:
        chain = config.chain_for_model(model)
        print(f"  model {model}: {_chain_line(config, chain) if chain else '(no provider)'}")
    return 0


def _cooling_line(listener: Listener) -> str:
    if listener.on_all_cooling == "wait":
        return f"; on all cooling: wait {listener.max_wait:g}s (at most {listener.max_waiting} at once)"
    return "; on all cooling: try anyway" if listener.on_all_cooling == "try_anyway" else ""


def _chain_line(config: Config, chain: Chain) -> str:
    """`a×3 | b×1 -> c (API) -> …; first token within 2s`: a priority group's members share it by weight, then the next."""
    sizes = Counter(provider.group for provider in config.providers.values())
    steps: list[tuple[str, list[str]]] = []
    for name in chain.providers:
        provider = config.providers[name]
        api = provider_api(provider)
        label = name if api == OPENAI_CHAT else f"{name} ({_API_NAMES[api]})"
        if sizes[provider.group] > 1:
            label += f"×{provider.weight}"
        if steps and sizes[provider.group] > 1 and steps[-1][0] == provider.group:
            steps[-1][1].append(label)
        else:
            steps.append((provider.group, [label]))
    line = " -> ".join(" | ".join(members) for _, members in steps)
    policy = chain.policy
    if policy.first_token_timeout is not None:
        line += f"; an attempt without its first token in {policy.first_token_timeout:g}s is left"
    if policy.hedge_after is not None:
        line += f"; hedged after {policy.hedge_after:g}s"
    if policy.retry_budget is not None:
        line += f"; retry budget {policy.retry_budget:g}%"
    if policy.context_window_fallbacks:
        line += f"; context window -> {', '.join(policy.context_window_fallbacks)}"
    if policy.content_policy_fallbacks:
        line += f"; content policy -> {', '.join(policy.content_policy_fallbacks)}"
    grouped = any(sizes[config.providers[name].group] > 1 for name in chain.providers)
    routing = config.routing.get(config.providers[chain.providers[0]].model)
    if routing is not None and grouped:
        line += "; latency" if routing.strategy == "latency" else ""
        line += f"; affinity {routing.affinity_header}" if routing.affinity_header else ""
    if config.cooldown.slow_start and grouped:
        line += f"; slow start {config.cooldown.slow_start:g}s"
    return line


def _schema(args) -> int:
    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _preflight(args) -> int:
    results = preflight(load_config(args.config), args.timeout, args.with_keys)
    for result in results:
        print(result.line(), flush=True)
    if not results:
        print("no providers configured")
    return EXIT_DOWN if any(not result.up for result in results) else 0


def _render(args) -> int:
    config = load_config(args.config)
    tls_files = (args.sidecar_tls_cert, args.sidecar_tls_key, args.sidecar_ca)
    if any(tls_files) and not all(tls_files):
        raise UsageError("--sidecar-tls-cert, --sidecar-tls-key and --sidecar-ca go together")
    options = RenderOptions(
        sidecar=args.sidecar,
        admin_port=args.admin_port,
        admin_address=args.admin_address,
        sidecar_tls=SidecarTls(*tls_files) if all(tls_files) else None,
        max_heap_bytes=args.max_heap_mb * 1024 * 1024 if args.max_heap_mb else None,
        envoy_stats_port=args.envoy_stats_port or None,
    )
    text = render_yaml(config, options, args.xds_dir)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _serve(args) -> int:
    config = _load_serving(args.config)
    tls_files = (args.tls_cert, args.tls_key, args.client_ca)
    if any(tls_files) and not all(tls_files):
        raise UsageError("--tls-cert, --tls-key and --client-ca go together (mutual TLS: Envoy must present a certificate too)")
    tls = ServerTls(*tls_files) if all(tls_files) else None
    try:
        check_listen(args.listen, tls, args.insecure_tcp)
    except ListenError as exc:
        raise UsageError(str(exc)) from None

    async def run() -> None:
        xds = None
        if args.xds_dir:
            admin_url = envoyadmin.normalize(args.envoy_admin)
            if not admin_url:
                log.warning("no --envoy-admin: xDS updates are applied after a fixed wait, and one Envoy rejects is not noticed or rolled back")
            xds = XdsFiles(args.xds_dir, RenderOptions(sidecar=args.listen), admin_url=lambda: admin_url)
        else:
            log.warning("no --xds-dir: a reload changes the sidecar's decisions but not Envoy's routes and clusters")
        sidecar = Sidecar(config, args.listen, args.config, args.metrics_port, xds, tls, _token(args.reload_token_file))
        await sidecar.start()
        stop = asyncio.Event()
        install_signal_handlers(stop, reload=lambda: sidecar.reload_soon("SIGHUP"))  # before saying we serve
        where = args.listen if args.listen.startswith("unix:") else f"{args.listen.rpartition(':')[0]}:{sidecar.port}"
        print_line(f"extproc sidecar serving ext_proc on {where}")
        print_line(f"metrics and health on {sidecar.metrics_url} (/metrics, /healthz, /readyz)")
        await stop.wait()
        await sidecar.stop(grace_s=5)

    _run(run())
    return 0


def _up(args) -> int:
    config = _load_serving(args.config)

    async def run() -> int:
        mocks = await _start_mocks(config) if args.mock_providers else []
        gateway = Gateway(
            config,
            config_path=args.config,
            concurrency=args.concurrency,
            log_level=args.envoy_log_level,
            drain_timeout_s=args.drain_timeout,
            drain_time_s=args.drain_time,
            metrics_port=args.metrics_port,
            reload_token=_token(args.reload_token_file),
            max_heap_bytes=args.max_heap_mb * 1024 * 1024 if args.max_heap_mb else None,
        )
        try:
            await gateway.start()
            assert gateway.sidecar is not None  # started
            sidecar = gateway.sidecar
            stop = asyncio.Event()
            install_signal_handlers(stop, reload=lambda: sidecar.reload_soon("SIGHUP"))  # before saying we serve
            for name, port in gateway.listener_ports.items():
                print_line(f"extproc gateway listening on http://{gateway.connect_host(name)}:{port} (listener {name})")
            print_line(f"metrics and health on {sidecar.metrics_url} (/metrics, /healthz, /readyz)")
            print_line(f"envoy admin on {gateway.admin_url} (loopback only)")
            print_line(f"watching {args.config} for changes (also: kill -HUP {os.getpid()}, POST /reload)")
            print_line("press Ctrl-C to stop")
            await _first(stop.wait(), gateway.envoy_exited.wait())
            if gateway.failure:
                print(f"error: {gateway.failure}; stopping (restart `extproc up`, or let your supervisor do it)", file=sys.stderr, flush=True)
                return 1
            print_line("stopping: draining in-flight requests")
            return 0
        finally:
            await gateway.stop()
            for mock in mocks:
                await mock.stop()

    return _run(run())


async def _first(*waits) -> None:
    """Until the first of these awaitables is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


async def _start_mocks(config: Config) -> list[MockProvider]:
    """A mock per loopback provider; the first of a chain with somewhere to fail over to answers 429, to show failover."""
    from .mock import for_provider as mock_for

    mocks = []
    for model, names in config.models.items():
        for index, name in enumerate(names):
            provider = config.providers[name]
            if provider.tls or not _is_loopback(provider.host):
                continue
            failing = index == 0 and len(config.chains[name].providers) > 1
            mock = mock_for(provider, status=429 if failing else 200, retry_after="7" if failing else None)
            await mock.start(provider.host, provider.port)
            behaviour = "429 with Retry-After: 7" if failing else f"200, {_MOCK_APIS[mock.api]}"
            print_line(f"mock provider {name} ({model}) on http://{provider.host}:{provider.port}: answers {behaviour}")
            mocks.append(mock)
    return mocks


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: How `check` names a provider API other than OpenAI's (a client of the other API is translated for it).
_API_NAMES = {ANTHROPIC_MESSAGES: "Anthropic's Messages API", BEDROCK_CONVERSE: "Bedrock's Converse API"}
#: What `--mock-providers` says each kind of mock answers with.
_MOCK_APIS = {
    "openai": "echoing the request", "anthropic": "in Anthropic's Messages API", "bedrock": "in Bedrock's Converse API (checking SigV4)",
    "vertex": "as Vertex AI (issuing and checking OAuth tokens)",
}  # fmt: skip


def _mock(args) -> int:
    from .mock import MockProvider, serve_forever
    from .mock.bedrock import BedrockState
    from .mock.vertex import VertexState, public_key_of

    signing = {"access_key_id": args.aws_access_key_id, "secret_access_key": args.aws_secret_access_key, "region": args.aws_region}
    bedrock = BedrockState(**{key: value for key, value in signing.items() if value is not None}) if args.api == "bedrock" else None
    if args.api == "vertex" and not args.service_account:
        print("error: --api vertex needs --service-account FILE (the key whose JWTs its token endpoint accepts)", file=sys.stderr)
        return 2
    vertex = VertexState(public_key_of(args.service_account)) if args.api == "vertex" else None
    mock = MockProvider(
        name=args.name, status=args.status, retry_after=args.retry_after, chunk_interval_s=args.chunk_interval, api=args.api, bedrock=bedrock, vertex=vertex
    )
    _run(serve_forever(mock, args.host, args.port))
    return 0


def _run(coroutine):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
