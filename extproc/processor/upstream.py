"""Upstream-level decisions: rebuild one attempt's request for the provider it goes to.

Runs once per attempt, after Envoy chose the attempt's host. Everything is
derived from the router level's `RequestContext` and the config, never from
the headers the previous attempt left behind.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

import msgspec

from .. import providers, translator
from ..config import Provider
from ..config.store import Live
from ..providers import kind_of
from ..providers.kind import CredentialsMissing
from . import backendauth, errors
from .context import RequestContext
from .headermutator import HeaderPlan, plan
from .jsonbody import Patch, model_patch


@dataclass(frozen=True)
class Attempt:
    provider: Provider
    headers: HeaderPlan
    context: RequestContext
    number: int = 0  # x-envoy-attempt-count
    #: The client and this provider speak different APIs: body and answer are translated by this pair.
    translation: translator.Pair | None = None

    @property
    def translate(self) -> bool:
        return self.translation is not None

    @property
    def patch(self) -> Patch | None:
        """What sets the body Envoy re-sends (the router level's) to this provider's model; None when it names it already.

        Applied by Envoy (a Lua filter after the upstream-level ext_proc): the body never crosses gRPC.
        """
        span, body_model = self.context.span, self.context.body_model
        if self.translate or span is None or body_model is None or body_model == self.provider.model_name:
            return None
        return model_patch(json.dumps(body_model).encode(), span, self.provider.model_name)

    def translated(self, sent: bytes | memoryview) -> translator.Request | errors.Reply:
        """The attempt's body in the provider's API, or the client's error when it has no translation."""
        assert self.translation is not None
        try:
            return self.translation.translate(msgspec.json.decode(sent), self.provider, self.context.originals)
        except translator.InvalidField as exc:
            return errors.error_reply(400, str(exc), "invalid_request_error", "invalid_type", param=exc.param)
        except (ValueError, translator.TranslationError) as exc:
            api = "Anthropic's Messages API" if translator.provider_api(self.provider) == translator.ANTHROPIC_MESSAGES else "OpenAI's chat.completions API"
            message = f"This request cannot be sent to provider {self.provider.name!r} ({api}): {exc}."
            return errors.error_reply(400, message, "invalid_request_error", "untranslatable_request")


    def signature(self, path: str | None, body: bytes) -> list[tuple[str, str]] | errors.Reply:
        """The headers that sign this attempt's exact bytes, for a kind that signs (Bedrock); the client's error when it cannot be."""
        sign = kind_of(self.provider).sign
        if sign is None:
            return []
        try:
            return sign(self.provider, path or dict(self.headers.set)[":path"], body)
        except CredentialsMissing as exc:
            return errors.credentials_missing(f"{exc}.")


def plan_attempt(live: Live, cluster: str | None, context: RequestContext | None, present: Collection[str], number: int = 0) -> Attempt | errors.Reply:
    """The attempt's request, for the provider whose host is `cluster` (the Envoy cluster of the picked endpoint).

    Credentials come only from the snapshot entry of that very cluster: a host
    that no live snapshot knows gets nothing and the attempt is refused.
    """
    if context is None:
        return errors.error_reply(500, "The gateway lost this request's routing context.", "api_error", "missing_context")
    provider = live.provider(cluster) if cluster else None
    if provider is None:
        message = f"The upstream cluster {cluster!r} is not in the gateway's configuration."
        return errors.error_reply(503, message, "api_error", "provider_unavailable")
    missing = backendauth.unavailable(provider)
    if missing is not None:
        return errors.credentials_missing(missing)
    only = providers.restricted(context.path)
    if only is not None and not providers.serves(provider, only):  # the router level caps retries before such a provider: never reached
        return errors.no_provider_for(only, provider.model, providers.why_not(only))
    pair = translator.for_attempt(context.path, provider)
    if pair is not None:
        headers = plan(live.current, provider, pair.path or context.path, context.originals, present, extra=pair.headers)
        return Attempt(provider=provider, headers=headers, context=context, number=number, translation=pair)
    headers = plan(live.current, provider, context.path, context.originals, present)
    return Attempt(provider=provider, headers=headers, context=context, number=number)
