"""The config file's shape, as pydantic models: what each key may hold, checked one key at a time.

These models validate the YAML (after `$VAR` expansion) and are the source of
the published JSON Schema (`extproc schema`). They say nothing about how keys
relate to each other (duplicate names, fallbacks to unknown models, one
default): `resolve` checks that while building the frozen `Config`.

Custom checks raise `invalid(...)` so the message a user reads is ours, not
pydantic's; `load.problems_from` turns pydantic's built-in errors into the same
voice.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, model_validator
from pydantic_core import PydanticCustomError, core_schema

from ..contract import FIRST_TOKEN_TIMING, HEDGE_TIMING

#: Envoy retry conditions a `retry_on` list may name besides HTTP status codes.
RETRY_CONDITIONS = frozenset({"connect-failure", "reset", "reset-before-request", "refused-stream", "5xx", "gateway-error", "retriable-4xx"})
TRACE_PROTOCOLS = ("http/protobuf", "grpc")
#: The API paths a listener forwards by default: OpenAI's and Anthropic's (a prefix matches itself and what is under it).
DEFAULT_ALLOWED_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/models",
    "/v1/moderations",
    "/v1/audio",
    "/v1/images",
)
DEFAULT_ALLOWED_METHODS = ("GET", "POST")

#: Plano's `provider_interface` values -> the API kind they speak here (credentials, telemetry names).
#: Most are OpenAI-compatible APIs; `plano` (Plano's own routing model) has no meaning here.
PLANO_INTERFACES = {
    "openai": "openai", "chatgpt": "openai", "openrouter": "openai", "moonshotai": "openai", "xiaomi": "openai",
    "digitalocean": "openai", "vercel": "openai", "gemini": "openai", "deepseek": "deepseek", "groq": "groq",
    "mistral": "mistral", "claude": "anthropic", "anthropic": "anthropic", "azure_openai": "azure_openai",
}  # fmt: skip

_HOST = re.compile(r"^[A-Za-z0-9.-]+(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::\d{1,5})?$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"})
_PATH_PREFIX = re.compile(r"^/(?!.*(?:^|/)\.\.?(?:/|$))[^?#\s]*$")
_METHOD = re.compile(r"^[A-Z]+$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: A value an editor should accept for a typed key: the value itself, or a `$VAR` to be expanded at load.
_VARIABLE = {"type": "string", "pattern": r"\$"}


def invalid(message: str) -> PydanticCustomError:
    """A validation error whose message is exactly `message`."""
    return PydanticCustomError("config", "{reason}", {"reason": message})


def kind(value: Any) -> str:
    """What a YAML value is, in words."""
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


@dataclass(frozen=True, eq=False)  # hashed by identity: typing hashes annotations, and `schema` is a dict
class Checked:
    """Annotation: the value is converted by `check` (or refused with `invalid`) and documented as `schema`."""

    check: Callable[[Any], Any]
    schema: dict[str, Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return self.schema


def integer(low: int, high: int | None = None) -> Checked:
    def check(value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise invalid(f"expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"expected an integer, got {kind(value)}")
        if value < low or (high is not None and value > high):
            raise invalid(f"{value} is out of range: must be {f'between {low} and {high}' if high is not None else f'at least {low}'}")
        return value

    bounds = {"minimum": low} | ({"maximum": high} if high is not None else {})
    return Checked(check, {"anyOf": [{"type": "integer", **bounds}, _VARIABLE]})


def _duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise invalid(f"expected a duration like 30s, 500ms or 5m, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise invalid(f"expected a duration like 30s, 500ms or 5m, got {kind(value)}")
    if seconds <= 0:
        raise invalid("must be greater than zero")
    return seconds


def _size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise invalid(f"expected a size like 10MiB or 1048576, got {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise invalid(f"expected a size like 10MiB or 1048576, got {kind(value)}")
    if size < 1024:
        raise invalid(f"{size} bytes is too small: must be at least 1KiB")
    return size


#: A message to the sidecar carries a body twice over at most (`contract.message_limit`), and gRPC's limit is 2 GiB.
MAX_BODY_BYTES = 2**30 - 1


def _body_size(size: int) -> int:
    if size > MAX_BODY_BYTES:
        raise invalid(f"{size} bytes is too large: must be less than 1GiB (the sidecar's gRPC messages carry up to twice the body, at most 2GiB)")
    return size


def _text(pattern: re.Pattern[str], what: str) -> Checked:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise invalid(f"expected a string, got {kind(value)}")
        if not pattern.match(value):
            raise invalid(f"{value!r} is not {what}")
        return value

    return Checked(check, {"type": "string", "pattern": pattern.pattern, "description": what})


def _model(value: Any) -> Any:
    if isinstance(value, str) and not all(value.partition("/")[::2]):
        raise invalid(f"{value!r} must be provider/model, like openai/gpt-4")
    return value


def _base_url(value: Any) -> Any:
    """An http(s) URL with a host; never repeated in a message when it holds credentials."""
    if not isinstance(value, str):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = value if "@" not in parts.netloc else parts._replace(netloc="…@" + parts.netloc.rpartition("@")[2]).geturl()
        raise invalid(f"{shown!r} is not an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise invalid("must not hold credentials (user:password@): use access_key")
    if parts.query or parts.fragment:
        raise invalid(f"{value!r} must not hold a query or fragment")
    try:
        parts.port  # noqa: B018 - raises on an invalid port
    except ValueError:
        raise invalid(f"{value!r} has an invalid port") from None
    return value


#: The fields google-auth needs of a key file, by its `type`.
_GOOGLE_KEY_FIELDS = {
    "service_account": ("client_email", "private_key", "token_uri"),
    "authorized_user": ("client_id", "client_secret", "refresh_token"),
    "external_account": ("audience", "subject_token_type", "token_url"),
}


def _google_key_file(value: Any) -> Any:
    """A Google credentials file as google-auth reads it (a service account's key, most often); never echoes its content."""
    value = _readable_file(value)
    if not isinstance(value, str):
        return value
    try:
        with open(value, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        raise invalid(f"{value!r} is not a JSON key file") from None
    kind_of_key = data.get("type") if isinstance(data, dict) else None
    if kind_of_key not in _GOOGLE_KEY_FIELDS:
        raise invalid(f"{value!r} is not a Google credentials file (its type is not one of {', '.join(_GOOGLE_KEY_FIELDS)})")
    missing = [name for name in _GOOGLE_KEY_FIELDS[kind_of_key] if not isinstance(data.get(name), str) or not data[name]]
    if missing:
        raise invalid(f"{value!r} is a {kind_of_key} file without {', '.join(missing)}")
    return value


def _readable_file(value: Any) -> Any:
    if isinstance(value, str) and not os.path.isfile(value):
        raise invalid(f"{value!r} is not a readable file")
    return value


def _header_name(value: Any) -> Any:
    name = str(value).lower()
    if not _HEADER_NAME.match(name) or name in _RESERVED_HEADERS or name.startswith("x-arch-"):
        raise invalid(f"{value!r} cannot be set per provider (reserved or not a valid header name)")
    if name == "authorization":
        raise invalid("set the provider's credential with access_key, not headers")
    return name


def _session_header(value: Any) -> Any:
    name = str(value).lower()
    if not _HEADER_NAME.match(name) or name in _RESERVED_HEADERS or name.startswith("x-arch-"):
        raise invalid(f"{value!r} is not a header a client can send (reserved or not a valid header name)")
    return name


def _retry_on(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 400 <= value <= 599:
            raise invalid(f"status {value} is not an HTTP error status (400-599)")
        return value
    if isinstance(value, str) and value in RETRY_CONDITIONS:
        return value
    raise invalid(f"{value!r} is neither a status code nor one of: {', '.join(sorted(RETRY_CONDITIONS))}")


def _listed(empty: str | None = None) -> BeforeValidator:
    """A YAML list, kept as a tuple (the running config is frozen and hashable); `empty`: why an empty one is refused."""

    def check(value: Any) -> Any:
        if isinstance(value, list):
            value = tuple(value)
        if not isinstance(value, tuple):
            raise invalid(f"expected a list, got {kind(value)}")
        if not value and empty is not None:
            raise invalid(empty)
        return value

    return BeforeValidator(check)


def _paths(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(item.rstrip("/") or "/" for item in value)


def _one_of(*choices: str, what: str = "") -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, str) and value not in choices:
            raise invalid(what.format(value=value) if what else f"{value!r} must be {' or '.join(choices)}")
        return value

    return BeforeValidator(check)


def _interface(value: Any) -> Any:
    if isinstance(value, str) and value not in PLANO_INTERFACES:
        reason = "Plano's own routing model is not served here" if value == "plano" else f"use one of: {', '.join(sorted(PLANO_INTERFACES))}"
        raise invalid(f"{value!r} is not supported ({reason})")
    return value


def _date_text(value: Any) -> Any:
    """YAML reads an unquoted `2024-10-21` as a date: an API version is its text."""
    return value.isoformat() if isinstance(value, datetime.date) else value


def _url(schemes: tuple[str, ...], message: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, str) and value:
            parts = urlsplit(value)
            if parts.scheme not in schemes or (not parts.hostname and parts.scheme != "unix"):
                raise invalid(message.format(value=value))
        return value

    return BeforeValidator(check)


def _redis_url(value: Any) -> Any:
    """A URL redis-py can connect with, checked by redis-py's own parser (never echoed: it may hold a password)."""
    if not isinstance(value, str) or not value:
        return value or None
    from redis.connection import parse_url  # only configs that share cooldowns pay for importing redis

    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or (not parts.hostname and parts.scheme != "unix"):
        raise invalid("expected a redis://, rediss:// or unix:// URL")
    try:
        parse_url(value)
    except ValueError as exc:
        raise invalid(f"not a URL Redis can be reached at: {exc}") from None
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise invalid(f"the database (the URL's path) must be a number, got {database!r}")
    return value


def check_endpoint(value: str) -> str | None:
    """Why `value` is not an OTLP collector URL, or None (shared with the OTEL_* variables)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http:// or https:// URL with a host, got {value!r}"
    return None


def check_ratio(value: Any, scale: float) -> float:
    """A number between 0 and `scale`, as a percentage (shared with OTEL_TRACES_SAMPLER_ARG)."""
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not 0 <= number <= scale:
        raise invalid(f"expected a number between 0 and {scale:g}, got {value!r}")
    return number * 100.0 / scale


def _percent(value: Any) -> float:
    """A share written `20%` or `20`, between 1 and 100."""
    number = value.strip().removesuffix("%") if isinstance(value, str) else value
    try:
        percent = None if isinstance(number, bool) else float(number)
    except (TypeError, ValueError):
        percent = None
    if percent is None or not 1 <= percent <= 100:
        raise invalid(f"expected a percentage between 1% and 100%, like 20%, got {value!r}")
    return percent


def _ratio(scale: float) -> Checked:
    return Checked(lambda value: check_ratio(value, scale), {"type": "number", "minimum": 0, "maximum": scale})


def _endpoint(value: Any) -> Any:
    if isinstance(value, str) and (reason := check_endpoint(value)):
        raise invalid(reason)
    return value


Text = Annotated[str, Field(strict=True)]
Duration = Annotated[float, Checked(_duration, {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": _DURATION.pattern}]})]
Size = Annotated[int, Checked(_size, {"anyOf": [{"type": "integer", "minimum": 1024}, {"type": "string", "pattern": _SIZE.pattern}]})]
Port = Annotated[int, integer(0, 65535)]
RetryOn = Annotated[int | str, Checked(_retry_on, {"anyOf": [{"type": "integer", "minimum": 400, "maximum": 599}, {"enum": sorted(RETRY_CONDITIONS)}]})]


class Section(BaseModel):
    """A mapping of the config file: unknown keys refused, types strict, nothing coerced silently."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, protected_namespaces=())
    #: What an unknown key in this section is told; `{allowed}` lists the keys that are.
    unknown_key: ClassVar[str] = "unknown key (allowed: {allowed})"


class RetryPolicy(Section):
    """When a request moves on to the next provider of its chain."""

    retry_on: Annotated[tuple[RetryOn, ...], _listed("an empty list would turn failover off; list at least one status or condition (the default is [429])")] = Field(
        default=(429,), description="HTTP statuses (400-599) and Envoy retry conditions that fail over"
    )
    max_attempts: Annotated[int, integer(1, 10)] | None = Field(default=None, description="attempts in all, the first included (default: one per provider of the chain)")
    per_try_timeout: Duration | None = None
    fallback_models: Annotated[tuple[Text, ...], _listed()] = Field(default=(), description="models whose providers are tried after this model's own, in order")
    context_window_fallbacks: Annotated[tuple[Text, ...], _listed()] = Field(
        default=(), description="models a prompt too long for this one goes to: estimated over every max_input_tokens, or refused by a provider as too long"
    )
    content_policy_fallbacks: Annotated[tuple[Text, ...], _listed()] = Field(
        default=(), description="models a request a provider refused on content policy goes to (without them: the refusal as sent)"
    )
    first_token_timeout: Duration | None = Field(
        default=None, description="an attempt that sent no answer (a stream: no first token) by then is left for the next provider; nothing of it reaches the client"
    )
    hedge_after: Duration | None = Field(
        default=None, description="an attempt that sent no answer (a stream: no first token) by then gets a parallel attempt on the next provider; the first to answer wins"
    )
    retry_budget: Annotated[float, Checked(_percent, {"anyOf": [{"type": "number", "minimum": 1, "maximum": 100}, {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%\s*$"}]})] | None = Field(
        default=None, description="the model's retries over the last 10s at most this share of its requests (at least 3 a second): past it, a request is not failed over"
    )

    @model_validator(mode="after")
    def _one_timing(self) -> RetryPolicy:
        if self.first_token_timeout is not None and self.hedge_after is not None:
            raise invalid("first_token_timeout and hedge_after exclude each other: a hedged attempt is never abandoned (it races the next one); set one")
        if self.retry_budget is not None and self.max_attempts == 1:
            raise invalid("retry_budget has nothing to limit with max_attempts: 1 (no request is retried)")
        if self.content_policy_fallbacks and self.hedge_after is not None:
            raise invalid(
                "content_policy_fallbacks and hedge_after exclude each other: a refusal is read before Envoy acts on it, which"
                " a chain that hedges cannot do (Envoy 1.40 crashes when a failed answer is released beside another attempt)"
            )
        return self

    @cached_property
    def status_codes(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(item for item in self.retry_on if isinstance(item, int)))

    @cached_property
    def conditions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(item for item in self.retry_on if isinstance(item, str)))

    @property
    def timing(self) -> str:
        """How its attempts are timed (`contract.TIMING_TAG` carries it): hedged, left at the first token, or "" (plain failover).

        With either timing a stream's response headers wait for its first token, so an attempt can still be left (or lose a race).
        """
        if self.hedge_after is not None:
            return HEDGE_TIMING
        return FIRST_TOKEN_TIMING if self.first_token_timeout is not None else ""

    @property
    def refusal_fallbacks(self) -> bool:
        """A provider's 400 may send the request to another model (its body is read: the "refused" phase)."""
        return bool(self.context_window_fallbacks or self.content_policy_fallbacks)

    @property
    def attempt_timeout(self) -> float | None:
        """Envoy's per-try timeout: it ends (or hedges) an attempt that has sent the client nothing yet."""
        limits = [limit for limit in (self.per_try_timeout, self.first_token_timeout, self.hedge_after) if limit is not None]
        return min(limits) if limits else None


class Affinity(Section):
    header: Annotated[str, BeforeValidator(_session_header)] = Field(
        description="requests with the same value of this header go to the same member of a priority group while it is available"
    )


class Routing(Section):
    """How a request picks among the members of its model's priority group (per model: on any one of its providers)."""

    strategy: Annotated[Literal["weighted", "latency"], _one_of("weighted", "latency")] = Field(
        default="weighted", description="weighted: drawn by weight; latency: of two members drawn by weight, the one faster to answer lately"
    )
    affinity: Affinity | None = None

    @property
    def affinity_header(self) -> str | None:
        """A session's requests (the same value of this header) stay on one member while it is available; None: no sessions."""
        return self.affinity.header if self.affinity is not None else None


class Provider(Section):
    """One `model_providers` entry: a model served at a base_url, with its credentials."""

    model: Annotated[Text, BeforeValidator(_model)] = Field(description="provider/model, as clients ask for it: openai/gpt-4o")
    name: Annotated[str, _text(NAME, "a name of letters, digits and . _ : / @ - (not starting with a symbol)")] | None = None
    base_url: Annotated[Text, BeforeValidator(_base_url)] | None = Field(default=None, description="http(s)://host[:port][/path]; known kinds have a default")
    access_key: Text | None = Field(default=None, repr=False, description="the provider's key, usually $ENV_VAR; never logged")
    default: bool = Field(default=False, description="serves requests whose model no provider serves")
    retry_policy: RetryPolicy | None = None
    routing: Routing | None = None
    passthrough_auth: bool = Field(default=False, description="forward the client's own credential instead of access_key")
    headers: dict[Annotated[str, BeforeValidator(_header_name)], Text] = Field(default={}, repr=False, description="extra headers sent to this provider only (values may be secrets)")
    ca_file: Annotated[Text, BeforeValidator(_readable_file)] | None = Field(default=None, description="PEM bundle that verifies this provider's TLS certificate")
    provider_interface: Annotated[Text, BeforeValidator(_interface)] | None = Field(default=None, description="the API it speaks, for proxies named otherwise (Plano)")
    http_host: Annotated[str, _text(_HOST, "a host[:port]")] | None = Field(default=None, description="the Host header to send, when not base_url's (Plano)")
    default_max_tokens: Annotated[int, integer(1)] = Field(default=4096, description="Anthropic providers: max_tokens for a translated request that gives none")
    priority: Annotated[int, integer(0, 1000)] | None = Field(default=None, description="lower first; providers of a model with the same priority share its traffic by weight (default: file order)")
    weight: Annotated[int, integer(1, 1000)] = Field(default=1, description="this provider's share of its priority group's traffic")
    max_input_tokens: Annotated[int, integer(1)] | None = Field(
        default=None, description="the longest prompt it takes, in tokens: a request estimated longer (its body's bytes / 4) skips it uncalled"
    )
    vertex_project: Text | None = Field(default=None, description="vertex_ai/<model>: the Google Cloud project")
    vertex_location: Text | None = Field(default=None, description="vertex_ai/<model>: the region (us-east5, europe-west1, global, …)")
    vertex_credentials: Annotated[Text, BeforeValidator(_google_key_file)] | None = Field(
        default=None, description="vertex_ai/<model>: a service-account key file; without it, Application Default Credentials"
    )
    aws_region_name: Text | None = Field(default=None, description="bedrock/<model>: the AWS region; default AWS_REGION, then AWS_DEFAULT_REGION")
    aws_access_key_id: Text | None = Field(default=None, repr=False, description="bedrock/<model>: with aws_secret_access_key; default: the standard AWS chain")
    aws_secret_access_key: Text | None = Field(default=None, repr=False, description="bedrock/<model>: never logged")
    aws_session_token: Text | None = Field(default=None, repr=False, description="bedrock/<model>: temporary credentials' token")
    api_version: Annotated[Text, BeforeValidator(_date_text)] | None = Field(default=None, description="azure/<deployment>: the api-version of /openai/deployments/<deployment>/…; without it, Azure's v1 path")

    @property
    def kind(self) -> str:
        """The provider kind: "openai" for "openai/gpt-4", or the API its `provider_interface` names (mapped, Plano's)."""
        return PLANO_INTERFACES[self.provider_interface] if self.provider_interface else self.model.partition("/")[0]


class Listener(Section):
    type: Annotated[Literal["model"], _one_of("model", what="listener type {value!r} is not supported: only 'model' listeners are")]
    port: Port
    name: Text = Field(default="", description="default: listener_<its index>")
    address: Text = "0.0.0.0"
    timeout: Duration = Field(default=300.0, description="the whole request, every attempt included")
    stream_idle_timeout: Duration = Field(
        default=300.0, description="a request that moves no byte for this long ends (a stream stalled mid-answer; also the wait for a non-streamed answer)"
    )
    max_body_bytes: Annotated[Size, AfterValidator(_body_size)] = Field(default=10 * 1024 * 1024, description="larger request bodies get 413; less than 1GiB")
    on_all_cooling: Annotated[Literal["reject", "try_anyway", "wait"], _one_of("reject", "try_anyway", "wait")] = Field(
        default="reject", description="when every provider of a chain is cooling: a 429 at once, a try anyway, or a wait for the first back (max_wait)"
    )
    max_wait: Duration = Field(default=2.0, description="on_all_cooling: wait: the longest a request waits for a provider's cooldown to end")
    max_waiting: Annotated[int, integer(1, 100000)] = Field(default=1000, description="on_all_cooling: wait: requests waiting at once; beyond them, an instant 429")
    access_log: bool = Field(default=False, description="one JSON line per request on Envoy's stdout")
    allowed_paths: Annotated[
        tuple[Annotated[str, _text(_PATH_PREFIX, "a path starting with / (no dot-segments, no query)")], ...], _listed("is empty: nothing could be called"), AfterValidator(_paths)
    ] = Field(default=DEFAULT_ALLOWED_PATHS, description="what clients may call (a prefix matches itself and what is under it); anything else is answered by the gateway")
    allowed_methods: Annotated[tuple[Annotated[str, _text(_METHOD, "an upper-case HTTP method")], ...], _listed("is empty: nothing could be called")] = DEFAULT_ALLOWED_METHODS


class Cooldown(Section):
    enabled: bool = True
    default_cooldown: Duration = Field(default=5.0, description="after a 429 without Retry-After")
    max_cooldown: Duration = Field(default=60.0, description="cap on Retry-After and rate-limit resets")
    failure_threshold: Annotated[int, integer(1, 1000)] = Field(default=3, description="consecutive connect failures, resets or 5xx before a provider cools")
    rate_limit_headers: bool = Field(default=True, description="an answer whose rate-limit headers say nothing is left cools its provider until their reset")
    min_remaining_tokens: Annotated[int, integer(0)] = Field(default=0, description="with rate_limit_headers: tokens left at or under which a provider counts as spent")
    slow_start: Duration | None = Field(
        default=None, description="a priority group's member back from a cooldown takes its weight's share gradually over this long, from a tenth"
    )
    redis_url: Annotated[Text | None, BeforeValidator(_redis_url)] = Field(
        default=None, repr=False, description="cooldowns shared with every replica on the same Redis (redis://, rediss://, unix://); never echoed: it may hold a password"
    )


class Metrics(Section):
    address: Text = "0.0.0.0"
    port: Port = 9092
    token_usage: bool = Field(default=True, description="Envoy reads each answer's usage (JSON and event streams) into the access log and extproc_tokens_total")


class Tracing(Section):
    """Overridden by the standard OTEL_* environment variables."""

    endpoint: Annotated[Text, BeforeValidator(_endpoint)] | None = None
    protocol: Annotated[Literal["http/protobuf", "grpc"], _one_of(*TRACE_PROTOCOLS, what="{value!r} is not supported (use http/protobuf or grpc)")] | None = None
    service_name: Text | None = None
    random_sampling: Annotated[float, _ratio(100.0)] | None = Field(default=None, description="percent of requests traced (Plano)")
    sampling: Annotated[float, _ratio(1.0)] | None = Field(default=None, description="ratio of requests traced, 0-1")


class Alias(Section):
    target: Text


class Overrides(Section):
    unknown_key: ClassVar[str] = "a Plano override this gateway does not have (it understands: {allowed})"

    upstream_connect_timeout: Duration | None = None
    upstream_tls_ca_path: Annotated[Text, BeforeValidator(_readable_file)] | None = None


class ConfigFile(Section):
    """The whole file. Plano's config shape is accepted (`llm_providers`, `model_aliases`, `overrides`)."""

    model_config = ConfigDict(title="extproc gateway config", json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"})

    listeners: list[Listener]
    model_providers: list[Provider] | None = None
    llm_providers: list[Provider] | None = Field(default=None, description="Plano's older name for model_providers")
    version: Text | None = None
    cooldown: Cooldown = Cooldown()
    metrics: Metrics = Metrics()
    tracing: Tracing = Tracing()
    model_aliases: dict[str, Alias] = Field(default={}, description="a name clients may ask for -> {target: model}")
    overrides: Overrides = Overrides()


def json_schema() -> dict[str, Any]:
    """The JSON Schema editors and CI can check a config file against (`extproc schema`)."""
    return ConfigFile.model_json_schema()
