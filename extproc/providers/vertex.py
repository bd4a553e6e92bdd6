"""Google Vertex AI: Claude through Anthropic's API on rawPredict, other models through Vertex's OpenAI-compatible endpoint.

`model: vertex_ai/<model>` with `vertex_project` and `vertex_location`:

- Claude (`vertex_ai/claude-…`): `POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{model}:rawPredict`
  (`:streamRawPredict` for a stream), the Messages body without `model` and
  with `anthropic_version: vertex-2023-10-16`; answers are Anthropic's.
- Any other model: `POST /v1/projects/{p}/locations/{l}/endpoints/openapi/chat/completions`
  with `model: google/<model>` (a name with its own publisher, `meta/…`, is kept).

Credentials: an OAuth access token (scope cloud-platform) from google-auth,
for the service-account key file `vertex_credentials`, else Application
Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, GKE Workload
Identity, the metadata server). `GoogleToken` mints it off the request path
(at start-up and reload, then before it expires) and hands out the current one.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..apis import ANTHROPIC_MESSAGES, OPENAI_CHAT
from .kind import Kind, without_version

if TYPE_CHECKING:
    from ..config.model import Provider

log = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: What rawPredict wants in the body instead of an `anthropic-version` header.
ANTHROPIC_VERSION = "vertex-2023-10-16"
#: A token is renewed 5 minutes before it expires (one that lives under 10 minutes: at half its lifetime).
_RENEW_SHARE = 0.5
_RENEW_MARGIN_S = 300.0


def base_url(location: str) -> str:
    return "https://aiplatform.googleapis.com" if location == "global" else f"https://{location}-aiplatform.googleapis.com"


def is_claude(provider: Provider) -> bool:
    return provider.model_name.startswith("claude")


def api_of(provider: Provider) -> str:
    return ANTHROPIC_MESSAGES if is_claude(provider) else OPENAI_CHAT


def wire_model(model_name: str) -> str:
    """The model name a Vertex request carries: Claude's goes in the path; others need their publisher (`google/`)."""
    return model_name if model_name.startswith("claude") or "/" in model_name else f"google/{model_name}"


def _location_path(provider: Provider) -> str:
    return f"{provider.path_prefix}/v1/projects/{quote(provider.vertex_project or '', safe='')}/locations/{quote(provider.vertex_location or '', safe='')}"


def claude_path(provider: Provider, stream: bool) -> str:
    method = "streamRawPredict" if stream else "rawPredict"
    return f"{_location_path(provider)}/publishers/anthropic/models/{quote(provider.model_name, safe='@')}:{method}"


def path(provider: Provider, client_path: str) -> str:
    """Claude: the rawPredict path (the body, read later, may switch it to streamRawPredict); others: the OpenAI-compatible endpoint."""
    if is_claude(provider):
        return claude_path(provider, stream=False)
    return f"{_location_path(provider)}/endpoints/openapi{without_version(client_path.split('?', 1)[0])}"


def claude_body(provider: Provider, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A Messages body as rawPredict takes it (no `model`, the Vertex API version), and its path (streamed or not)."""
    adjusted = {key: value for key, value in body.items() if key != "model"}
    adjusted["anthropic_version"] = ANTHROPIC_VERSION
    return adjusted, claude_path(provider, stream=body.get("stream") is True)


class GoogleToken:
    """One credential's current access token, minted and renewed by `refresh` (blocking: run it off the event loop)."""

    def __init__(self, credentials_file: str | None):
        self.credentials_file = credentials_file
        self._credentials: Any = None
        self._lock = threading.Lock()
        self.token: str | None = None
        self.renew_at = 0.0  # time.time() after which `refresh` mints a new one
        self.minted = 0  # tokens minted so far
        self.problem: str | None = "no access token yet"  # why there is no token, while there is none (`TokenSource.problem`)

    def refresh(self) -> None:
        """Mint a token when there is none or the current one is due; a failure is logged and the current one kept."""
        with self._lock:
            if self.token is not None and time.time() < self.renew_at:
                return
            try:
                credentials = self._load()
                credentials.refresh(_transport())
            except ImportError as exc:  # an install without google-auth's urllib3 transport
                self._failed(f"{exc.name or exc} is not installed (pip install 'google-auth[urllib3]')")
                return
            except Exception as exc:  # google-auth raises several kinds; the key itself is never in the message
                self._failed(f"{type(exc).__name__}: {exc}")
                return
            self.token = credentials.token
            self.problem = None
            self.minted += 1
            self.renew_at = _renew_at(credentials.expiry)

    def _failed(self, why: str) -> None:
        """Keep a token still valid (it is used until it expires); without one, say why (`/readyz`, each refused request)."""
        log.warning("could not get a Google access token (%s): %s", self.credentials_file or "application default credentials", why)
        if self.token is None:
            self.problem = why
        self.renew_at = time.time() + 10.0  # try again soon

    def _load(self) -> Any:
        if self._credentials is None:
            import google.auth
            from google.oauth2 import service_account

            if self.credentials_file:
                self._credentials = service_account.Credentials.from_service_account_file(self.credentials_file, scopes=[SCOPE])
            else:
                self._credentials, _ = google.auth.default(scopes=[SCOPE])
        return self._credentials


def _renew_at(expiry: datetime.datetime | None) -> float:
    if expiry is None:
        return time.time() + _RENEW_MARGIN_S
    expires = expiry.replace(tzinfo=datetime.UTC).timestamp()  # google-auth's expiry is naive UTC
    left = max(expires - time.time(), 0.0)
    return expires - min(left * _RENEW_SHARE, _RENEW_MARGIN_S)


def _transport() -> Any:
    import google.auth.transport.urllib3
    import urllib3

    return google.auth.transport.urllib3.Request(urllib3.PoolManager(timeout=urllib3.Timeout(total=10.0)))


#: One token per credential (a key file, or the application defaults), shared by every provider and config snapshot using it.
_TOKENS: dict[str | None, GoogleToken] = {}
_TOKENS_LOCK = threading.Lock()


def token_for(credentials_file: str | None) -> GoogleToken:
    with _TOKENS_LOCK:
        if credentials_file not in _TOKENS:
            _TOKENS[credentials_file] = GoogleToken(credentials_file)
        return _TOKENS[credentials_file]


KINDS = (
    Kind(
        "vertex_ai",
        telemetry_name="gcp.vertex_ai",
        config_keys=frozenset({"vertex_project", "vertex_location", "vertex_credentials"}),
        required_keys=("vertex_project", "vertex_location"),
        base_url_of=lambda keys: base_url(keys["vertex_location"]),
        api_of=api_of,
        chat_only=is_claude,
        path=path,
        wire_model=wire_model,
        token_source=lambda provider: token_for(provider.vertex_credentials),
        body_dialect=lambda provider: claude_body if is_claude(provider) else None,
    ),
)
