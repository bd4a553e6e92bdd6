"""AWS Bedrock's Converse API: `model: bedrock/<model id, inference profile id or ARN>`, signed with SigV4 over the body.

Requests go to `/model/<model id, percent-encoded>/converse` (`/converse-stream`
for a stream); the region comes from `aws_region_name`, else `AWS_REGION` /
`AWS_DEFAULT_REGION`. Each attempt is signed in the sidecar (botocore) over
the exact bytes it sends, with `aws_access_key_id` / `aws_secret_access_key`
(/ `aws_session_token`) when the entry gives them, else the standard AWS
chain (environment, shared files, web identity for IRSA and EKS Pod
Identity, container and instance metadata), which botocore refreshes before
expiry on `providers.tokens`' schedule, off the request path. A Bedrock API
key (`access_key`) is sent as `Authorization: Bearer` instead, unsigned.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..apis import BEDROCK_CONVERSE
from .kind import CredentialsMissing, Kind

if TYPE_CHECKING:
    from ..config.model import Provider

log = logging.getLogger(__name__)

SERVICE = "bedrock"
#: How often the credential chain is asked again (botocore refreshes when its credentials near their expiry).
_RECHECK_S = 60.0
#: The headers a signature adds.
_SIGNATURE_HEADERS = ("authorization", "x-amz-date", "x-amz-security-token")


def region(keys: Mapping[str, Any]) -> str | None:
    return keys.get("aws_region_name") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def base_url(keys: Mapping[str, Any]) -> str:
    where = region(keys)
    if where is None:
        raise ValueError("bedrock/… providers need a region: set aws_region_name (or AWS_REGION in the environment)")
    return f"https://bedrock-runtime.{where}.amazonaws.com"


def path(provider: Provider, client_path: str) -> str:
    return converse_path(provider, stream=False)


def _model_path(provider: Provider, operation: str) -> str:
    return f"{provider.path_prefix}/model/{quote(provider.model_name, safe='')}/{operation}"


def converse_path(provider: Provider, stream: bool) -> str:
    return _model_path(provider, "converse-stream" if stream else "converse")


def invoke_path(provider: Provider, stream: bool) -> str:
    """InvokeModel's path: Claude with Anthropic's own bodies (an Anthropic-format client's)."""
    return _model_path(provider, "invoke-with-response-stream" if stream else "invoke")


def converse_body(provider: Provider, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Converse takes the stream choice in its path, not its body."""
    stream = body.get("stream") is True
    return {key: value for key, value in body.items() if key != "stream"}, converse_path(provider, stream)


class AwsCredentials:
    """One set of AWS credentials: fixed keys, or the standard chain (`refresh` is blocking: run it off the event loop)."""

    def __init__(self, access_key_id: str | None, secret_access_key: str | None, session_token: str | None):
        self._keys = (access_key_id, secret_access_key, session_token)
        self._chain: Any = None
        self._lock = threading.Lock()
        self.frozen: Any = None  # botocore ReadOnlyCredentials
        self.token: str | None = None  # not a bearer credential: signatures are made per request
        self.renew_at = 0.0

    @property
    def problem(self) -> str | None:
        """Why there are no credentials to sign with, while there are none."""
        if self.frozen is not None:
            return None
        return "no AWS credentials found: aws_access_key_id/aws_secret_access_key, the environment, shared files, web identity, container or instance metadata"

    def refresh(self) -> None:
        from botocore.credentials import ReadOnlyCredentials
        from botocore.session import Session

        with self._lock:
            if self.frozen is not None and time.time() < self.renew_at:
                return
            access_key_id, secret_access_key, session_token = self._keys
            if access_key_id and secret_access_key:
                self.frozen = ReadOnlyCredentials(access_key_id, secret_access_key, session_token)
                self.renew_at = float("inf")
                return
            try:
                if self._chain is None:
                    self._chain = Session().get_credentials()
                self.frozen = self._chain.get_frozen_credentials() if self._chain is not None else None
            except Exception as exc:  # botocore raises several kinds; no secret is in their messages
                log.warning("could not get AWS credentials from the standard chain: %s", exc)
            if self.frozen is None:
                log.warning("no AWS credentials found (aws_access_key_id/aws_secret_access_key, the environment, shared files, web identity, container or instance metadata)")
            self.renew_at = time.time() + _RECHECK_S


_CREDENTIALS: dict[tuple[str | None, ...], AwsCredentials] = {}
_CREDENTIALS_LOCK = threading.Lock()


def credentials_for(provider: Provider) -> AwsCredentials:
    key = (provider.aws_access_key_id, provider.aws_secret_access_key, provider.aws_session_token)
    with _CREDENTIALS_LOCK:
        if key not in _CREDENTIALS:
            _CREDENTIALS[key] = AwsCredentials(*key)
        return _CREDENTIALS[key]


def sign(provider: Provider, request_path: str, body: bytes) -> list[tuple[str, str]]:
    """The SigV4 headers for POSTing `body` to `request_path` on the provider's host (none with a Bedrock API key)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    if provider.access_key:
        return []
    frozen = credentials_for(provider).frozen
    if frozen is None:
        raise CredentialsMissing(f"no AWS credentials for provider {provider.name!r}: set aws_access_key_id and aws_secret_access_key, or give the pod an AWS identity")
    request = AWSRequest(method="POST", url=f"{provider.scheme}://{provider.authority}{request_path}", data=body)
    SigV4Auth(frozen, SERVICE, provider.aws_region_name).add_auth(request)  # signs host and x-amz-date, and the body's hash
    return [(name, request.headers[name]) for name in _SIGNATURE_HEADERS if name in request.headers]


def _credentials(provider: Provider) -> AwsCredentials | None:
    return None if provider.access_key else credentials_for(provider)


KINDS = (
    Kind(
        "bedrock",
        api=BEDROCK_CONVERSE,
        telemetry_name="aws.bedrock",
        config_keys=frozenset({"aws_region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"}),
        base_url_of=base_url,
        settle=lambda keys: {**keys, "aws_region_name": region(keys)},
        path=path,
        body_dialect=lambda provider: converse_body,
        token_source=_credentials,
        sign=sign,
        sets_headers=frozenset(_SIGNATURE_HEADERS) - {"authorization"},
        chat_only=lambda provider: True,
    ),
)
