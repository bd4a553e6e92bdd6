"""Router-level decisions: which chain a request starts on, or why it is refused.

Runs once per request, before Envoy picks a route. Pure functions of the
config snapshot and the request; the gRPC layer translates their results.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

from .. import providers, translator
from ..config import Chain, Config, Listener, Provider
from ..config.model import Routing
from ..contract import unhedged_route
from ..providers.tokens import minted
from . import errors, multipart
from .backendauth import unavailable
from .context import RequestContext
from .cooldown import ProviderHealth
from .headermutator import PATCH_HEADER, TRANSLATE_HEADER, HeaderPlan, carried, client_values, plan
from .jsonbody import BodyError, ModelSpan, ParsedBody, Patch, is_blank, model_patch, parse
from .refusals import Redirect
from .retrybudget import RetryBudgets

MODELS_PATH = "/v1/models"
#: Header entries a request may have when it reaches the sidecar: a client's 100
#: (Envoy's usual limit) plus the pseudo-headers and the few Envoy adds first.
#: Envoy's listener allows more (render.HEADER_HEADROOM) so what the gateway
#: adds afterwards always fits.
CLIENT_HEADER_LIMIT = 110
#: Envoy's router reads it (and removes it) to cap one request's retries below its route's.
MAX_RETRIES_HEADER = "x-envoy-max-retries"


@dataclass(frozen=True)
class Forward:
    """Send the request to the chain that starts at `provider`."""

    provider: str
    context: RequestContext
    model: str
    #: The headers of attempt 1, made right for `provider` here so that attempt
    #: needs no upstream-level processing (retries are rebuilt there).
    headers: HeaderPlan
    #: The body's model set for `provider` (bytes to replace, which Envoy applies itself), so
    #: attempts to providers with that same model name need no body rewrite.
    #: None when the client's body already names the provider's model (or has no body).
    patch: Patch | None = None
    #: The same request gets this same decision for as long as `ProviderHealth.still_picks(provider,
    #: passed_over)`: no trial, weighted draw or minted credential went into it.
    reusable: bool = False
    #: The providers before `provider` in the chain, passed over because they were cooling down.
    passed_over: tuple[str, ...] = ()
    #: Sent with no retries: its model's retries are over `retry_policy.retry_budget`.
    over_budget: bool = False
    #: The model asked for, when its prompt was too long for it and went to `model`, a context-window fallback.
    moved_from: str | None = None


class Found(NamedTuple):
    """What Envoy found in a JSON body before the sidecar heard of the request: its top-level model string, and where its token is."""

    model: str
    start: int
    end: int


def refusal(listener: Listener, method: str, path: str) -> errors.Reply | None:
    """Why a request may not go to any provider: a path that climbs out of the provider's prefix, an endpoint or method not allowed."""
    route = path.split("?", 1)[0]
    if "\\" in route or any(segment in (".", "..") for segment in route.replace("%2e", ".").replace("%2E", ".").split("/")):
        return errors.invalid_path(route)
    if not any(route == prefix or route.startswith(prefix.rstrip("/") + "/") for prefix in listener.allowed_paths):
        return errors.unknown_endpoint(route, listener.allowed_paths)
    if method not in listener.allowed_methods:
        return errors.method_not_allowed(method, listener.allowed_methods)
    return None


def screen(config: Config, listener: Listener, headers: Mapping[str, str], count: int = 0) -> errors.Reply | None:
    """What the headers alone answer, whatever the model: too many of them (`count`: lines as sent), a path or method refused, the model list, a body too large."""
    if count > CLIENT_HEADER_LIMIT:
        return errors.too_many_headers(count, CLIENT_HEADER_LIMIT)
    path = headers.get(":path", "/")
    refused = refusal(listener, headers.get(":method", ""), path)
    if refused is not None:
        return refused
    endpoint = path.split("?", 1)[0]
    if headers.get(":method") == "GET" and (endpoint == MODELS_PATH or endpoint.startswith(MODELS_PATH + "/")):
        return models_reply(config, endpoint[len(MODELS_PATH) + 1 :])
    return _too_large(listener, headers)


def limits(listener: Listener, headers: Mapping[str, str], count: int) -> errors.Reply | None:
    """The part of `screen` that differs between requests of one method and path: the number of header lines, the body's size."""
    if count > CLIENT_HEADER_LIMIT:
        return errors.too_many_headers(count, CLIENT_HEADER_LIMIT)
    return _too_large(listener, headers)


def _too_large(listener: Listener, headers: Mapping[str, str]) -> errors.Reply | None:
    length = headers.get("content-length")
    if length and length.isdigit() and int(length) > listener.max_body_bytes:
        return errors.too_large(int(length), listener.max_body_bytes)
    return None


def route(
    config: Config,
    listener: Listener,
    headers: Mapping[str, str],
    end_of_stream: bool,
    health: ProviderHealth | None = None,
    found: Found | None = None,
    budgets: RetryBudgets | None = None,
    redirect: Redirect | None = None,
) -> errors.Reply | Forward | None:
    """A screened request's chain, from its headers and what Envoy found in its body; None means: wait for the body."""
    if end_of_stream:
        return resolve(config, listener, headers, None, health, budgets=budgets, redirect=redirect)
    if found is not None:
        token = b'"' + found.model.encode() + b'"'  # Envoy found no escape in it: the model's JSON text
        return resolve(config, listener, headers, ParsedBody(found.model, ModelSpan(found.start, found.end)), health, token, budgets, redirect)
    return None


def on_body(
    config: Config,
    listener: Listener,
    headers: Mapping[str, str],
    body: bytes | memoryview,
    health: ProviderHealth | None = None,
    budgets: RetryBudgets | None = None,
    redirect: Redirect | None = None,
) -> errors.Reply | Forward:
    """Decide from the body (Envoy found no model in it, or is not the kind to look)."""
    if len(body) > listener.max_body_bytes:
        return errors.too_large(len(body), listener.max_body_bytes)
    if is_blank(body):
        return resolve(config, listener, headers, None, health, budgets=budgets, redirect=redirect)
    try:
        separator = multipart.boundary(headers.get("content-type", ""))
        if separator is not None:  # a form (audio uploads): routed by its `model` field, passed on untouched
            return resolve(config, listener, headers, ParsedBody(multipart.form_field(body, separator, "model"), None), health, budgets=budgets, redirect=redirect)
    except multipart.MultipartError as exc:
        return errors.invalid_request(f"We could not read the multipart/form-data body of your request: {exc}.", "invalid_multipart")
    try:
        parsed = parse(body)
    except BodyError as exc:
        return errors.invalid_request(f"We could not parse the JSON body of your request: {exc}.", "invalid_json")
    span = parsed.span
    return resolve(config, listener, headers, parsed, health, b"" if span is None else bytes(body[span.start : span.end]), budgets, redirect)


def resolve(
    config: Config,
    listener: Listener,
    headers: Mapping[str, str],
    body: ParsedBody | None,
    health: ProviderHealth | None = None,
    token: bytes = b"",
    budgets: RetryBudgets | None = None,
    redirect: Redirect | None = None,
) -> errors.Reply | Forward:
    """model -> chain, started at its first provider not cooling down, and the patch that names its model in the body.

    The model is matched exactly ("openai/gpt-4o"), else by its bare name
    ("gpt-4o", as OpenAI SDK users write it) when only one model has that
    name; a request without a model goes to the default provider. `token`:
    the body's model value as it stands (its JSON text), when it has one.
    """
    # A request a provider refused, run again by Envoy for its fallback model (`processor.refusals`): that model's chain.
    found = _chain_for(config, body) if redirect is None else _chain_of(config, redirect.model)
    if isinstance(found, errors.Reply):
        return found
    model, chain = found
    # Measured against its chain's windows, when a provider of it declares one (its own model's providers are in it).
    tokens = prompt_tokens(headers) if config.windows and any(config.providers[name].max_input_tokens is not None for name in chain.providers) else None
    moved_from = None
    if tokens is not None and not any(fits(config.providers[name], tokens) for name in config.models[model]):
        found = _context_window_fallback(config, model, chain, tokens)
        if isinstance(found, errors.Reply):
            return found
        moved_from, (model, chain) = model, found
    eligible = _candidates(config, model, chain, headers, health, tokens)
    if isinstance(eligible, errors.Reply):
        return eligible
    candidates, only = eligible
    picked = _start(config, listener, chain, model, candidates, health)
    if isinstance(picked, errors.Reply):
        return picked
    start, reusable, passed_over = picked
    budget = chain.policy.retry_budget
    over_budget = budget is not None and budgets is not None and not budgets.request(model, budget)
    # A kept answer serves requests of the same shape, whatever their length: never one a window may have decided.
    reusable = reusable and budget is None and tokens is None and redirect is None
    forward = _forward(config, headers, body, token, model, start, only, reusable, passed_over, over_budget, tokens, redirect)
    return replace(forward, moved_from=moved_from) if moved_from is not None else forward


def _chain_for(config: Config, body: ParsedBody | None) -> errors.Reply | tuple[str, Chain]:
    """The model asked for (an alias resolved, a bare name matched) and its chain; the default provider's without one."""
    model = body.model if body is not None else None
    if model is None:
        if config.default_provider is None:
            return errors.invalid_request("You must provide a model parameter (this gateway has no default provider).", "missing_model")
        return config.providers[config.default_provider].model, config.chains[config.default_provider]
    if not isinstance(model, str):
        return errors.invalid_request("The 'model' parameter must be a string.", "invalid_model")
    model = config.aliases.get(model, model)
    return _chain_of(config, model if model in config.models else config.bare_models.get(model, model))


def prompt_tokens(headers: Mapping[str, str]) -> int | None:
    """The request's prompt in tokens, estimated as its body's bytes / 4, with no tokenizer (docs/config.md says how far
    off that runs); None without a `content-length` (Envoy's buffer sets one on every body)."""
    length = headers.get("content-length")
    return int(length) // 4 if length and length.isdigit() else None


def fits(provider: Provider, tokens: int | None) -> bool:
    """`provider` takes a prompt of `tokens` (its `max_input_tokens`, when it declares one)."""
    return provider.max_input_tokens is None or tokens is None or tokens <= provider.max_input_tokens


def _context_window_fallback(config: Config, model: str, chain: Chain, tokens: int) -> errors.Reply | tuple[str, Chain]:
    """A prompt too long for every provider of `model`: the first of its `context_window_fallbacks` with a provider that takes it."""
    for fallback in chain.policy.context_window_fallbacks:
        names = config.models.get(fallback, ())  # a fallback left out of a lenient load is skipped
        if any(fits(config.providers[name], tokens) for name in names):
            return fallback, config.chains[names[0]]
    largest = max(config.providers[name].max_input_tokens or 0 for name in config.models[model])
    message = (
        f"This request's prompt is about {tokens} tokens (its body's bytes / 4), more than any provider of model '{model}' takes "
        f"(at most {largest}){' or of its context_window_fallbacks' if chain.policy.context_window_fallbacks else ''}."
    )
    return errors.invalid_request(message, "context_length_exceeded")


def _chain_of(config: Config, model: str) -> errors.Reply | tuple[str, Chain]:
    """`model` and its chain, or the client's 404 naming the models there are."""
    chain = config.chain_for_model(model)
    return (model, chain) if chain is not None else errors.model_not_found(model, list(config.models))


def _candidates(
    config: Config, model: str, chain: Chain, headers: Mapping[str, str], health: ProviderHealth | None, tokens: int | None = None
) -> errors.Reply | tuple[tuple[str, ...], str | None]:
    """The providers a request may start at, in order, and the endpoint only some serve (None: every one serves it).

    A priority group's members come in an order drawn by weight (as `health` ramps them after a cooldown), the
    faster of the first two first (`routing.strategy: latency`), or, for a request of a session
    (`routing.affinity`), in its session's own order.
    """
    path = headers.get(":path", "/")
    candidates = chain.providers
    groups = config.groups.get(model)
    if groups is not None:  # priority groups: the first available member is picked by weight, or by the session
        own = len(config.models[model])
        routing = config.routing.get(model, _WEIGHTED)
        session = headers.get(routing.affinity_header) if routing.affinity_header is not None else None
        drawn = (_group_order(names, weights, routing, session, health) for names, weights in groups)
        candidates = (*(name for order in drawn for name in order), *chain.providers[own:])
    only = providers.restricted(path)
    if only is not None:  # not a chat endpoint: only providers serving it may see it (Anthropic's count_tokens; not Bedrock's)
        candidates = tuple(name for name in candidates if providers.serves(config.providers[name], only))
        if not candidates:
            return errors.no_provider_for(only, model, providers.why_not(only))
        only = only if len(candidates) < len(chain.providers) else None  # every provider serves it: nothing to cap
    if tokens is not None:  # a prompt too long for some: they are skipped (`fits`), at the start and, by the retry cap, after it
        candidates = tuple(name for name in candidates if fits(config.providers[name], tokens))
    callable_now = tuple(name for name in candidates if unavailable(config.providers[name]) is None)
    if not callable_now:  # a credential minted at run time is missing: nothing goes out without it
        return errors.credentials_missing(unavailable(config.providers[candidates[0]]) or "")
    return callable_now, only


def _start(
    config: Config, listener: Listener, chain: Chain, model: str, candidates: tuple[str, ...], health: ProviderHealth | None
) -> errors.Reply | tuple[str, bool, tuple[str, ...]]:
    """Where the chain starts: the first candidate not cooling down; whether a kept answer may serve it; who was passed over."""
    start = candidates[0]
    reusable, passed_over = model not in config.groups, candidates[:0]
    if health is not None:
        trial_s = chain.policy.attempt_timeout or listener.timeout  # how long a half-open provider's trial may take
        available, soonest = health.pick_start(candidates, trial_s)
        if available is not None:
            start = available
        elif listener.on_all_cooling != "try_anyway":  # "wait" too: the servicer may wait and ask again (`RouterStream`)
            return errors.all_cooling(model, soonest)
        passed_over = candidates[: candidates.index(start)]
        reusable = reusable and health.still_picks(start, passed_over)  # False for a trial: a kept answer never repeats one
    return start, reusable and not minted(config.providers[start]), passed_over


def _forward(
    config: Config,
    headers: Mapping[str, str],
    body: ParsedBody | None,
    token: bytes,
    model: str,
    start: str,
    only: str | None,
    reusable: bool,
    passed_over: tuple[str, ...],
    over_budget: bool = False,
    tokens: int | None = None,
    redirect: Redirect | None = None,
) -> Forward:
    """The request as it goes to the chain starting at `start`: its route, its first attempt's headers, its body patch, its context.

    `reusable`: a kept answer may serve the same request again (never for a model with a retry budget: each request counts).
    `over_budget`: its model's retries are over budget, so it goes with none and its provider's failed answer reaches the client.
    `tokens`: its estimated prompt, when some provider declares a window: retries stop before the first provider it does not fit.
    `redirect`: its first pass's knowledge: the client's path and header values (the headers seen now hold the first provider's).
    """
    path = redirect.path if redirect is not None else headers.get(":path", "/")
    provider = config.providers[start]
    started = config.chains[start]
    retries = "0" if over_budget else _retry_cap(config, started, only, tokens)
    extra: dict[str, str] = {MAX_RETRIES_HEADER: retries} if retries is not None else {}
    span = body.span if body is not None else None
    patch = model_patch(token, span, provider.model_name) if span is not None else None
    if patch is not None:  # Envoy runs its Lua patch only when told (it costs every request ~45k instructions otherwise)
        extra[PATCH_HEADER] = "1"
    originals = dict(redirect.originals) if redirect is not None else client_values(config, headers)
    route = config.chain_clusters[start]
    hedged = started.hedges
    if hedged and any(_answer_translated(path, config.providers[name]) for name in started.providers):
        hedged, route = False, unhedged_route(route)  # an answer held for translation must not meet a hedge (`Chain.unhedged`)
    context = RequestContext(
        path=path,
        originals=carried(config, originals, started),
        span=patch.span if patch is not None else span,
        body_model=provider.model_name if span is not None else None,
        hedged=hedged,
        model=model if started.policy.retry_budget is not None or started.policy.refusal_fallbacks else None,
    )
    # Attempt 1 to a provider of another API is translated at the upstream level, which Envoy runs on it when told.
    if translator.for_attempt(path, provider):
        extra[TRANSLATE_HEADER] = "1"
    first_attempt = plan(config, provider, path, originals, headers, route, extra)
    return Forward(
        provider=start, context=context, model=model, headers=first_attempt, patch=patch, reusable=reusable, passed_over=passed_over, over_budget=over_budget
    )


def _retry_cap(config: Config, chain: Chain, only: str | None, tokens: int | None) -> str | None:
    """`x-envoy-max-retries` for a request whose retries must stop where the chain's run of providers serving its
    endpoint (`only`) or taking its prompt (`tokens`) ends; None when the chain's own count stands."""
    if only is None and tokens is None:
        return None
    attempts = chain.num_retries + 1
    run = itertools.takewhile(lambda name: (only is None or providers.serves(config.providers[name], only)) and fits(config.providers[name], tokens), chain.providers)
    capped = min(attempts, sum(1 for _ in run))
    return str(capped - 1) if capped < attempts or only is not None else None


def _answer_translated(path: str, provider: Provider) -> bool:
    """Whether the upstream level holds `provider`'s answer to a client of `path` to translate it."""
    pair = translator.for_attempt(path, provider)
    return pair is not None and pair.translates_answer


def by_weight(names: tuple[str, ...], weights: tuple[float, ...], draw: Callable[[], float] = random.random) -> list[str]:
    """`names` in an order drawn by weight (each next one with probability weight / weights left): the first is picked by weight."""
    left = list(zip(names, weights))
    order = []
    while left:
        point = draw() * sum(weight for _, weight in left)
        index = 0
        while index < len(left) - 1 and point >= left[index][1]:
            point -= left[index][1]
            index += 1
        order.append(left.pop(index)[0])
    return order


_WEIGHTED = Routing()


def _group_order(names: tuple[str, ...], weights: tuple[int, ...], routing: Routing, session: str | None, health: ProviderHealth | None) -> list[str]:
    """A priority group's members in the order a request tries them: its session's, else drawn by weight (power of two
    choices on their latency where the model says so)."""
    if session:
        return by_affinity(names, weights, session)
    order = by_weight(names, health.ramped(names, weights) if health is not None else weights)
    if routing.strategy == "latency" and health is not None and len(order) > 1:
        return health.faster_first(order)
    return order


def by_affinity(names: tuple[str, ...], weights: tuple[int, ...], session: str) -> list[str]:
    """`names` in the order of weighted rendezvous hashing on `session`: the same session, the same order.

    A member's share of sessions follows its weight; while the first is
    cooling, its sessions (only they) go to their second, and come back
    when it returns, so a provider's prompt cache stays warm for them.
    """

    def score(name: str, weight: int) -> float:
        digest = hashlib.blake2b(f"{session}\0{name}".encode(), digest_size=8).digest()
        return -weight / math.log((int.from_bytes(digest, "big") + 0.5) / 2**64)

    return [name for _, name in sorted(((score(name, weight), name) for name, weight in zip(names, weights)), reverse=True)]


def models_reply(config: Config, model_id: str) -> errors.Reply:
    """OpenAI's `GET /v1/models` (and `/v1/models/{id}`), answered from the config."""
    entries = {
        model: {"id": model, "object": "model", "created": 0, "owned_by": model.split("/", 1)[0]}
        for model in config.models
    }
    # Aliases are names clients may ask for too: listed as what they stand for.
    entries.update((alias, {**entries[target], "id": alias}) for alias, target in config.aliases.items() if target in entries)
    if not model_id:
        return errors.json_reply(200, {"object": "list", "data": list(entries.values())})
    if model_id in entries:
        return errors.json_reply(200, entries[model_id])
    return errors.model_not_found(model_id, list(entries))
