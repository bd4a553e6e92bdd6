"""The router level's stream: one request, routed to a chain (or answered) from its headers and what Envoy found in its body."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from ..config.store import Live
from ..contract import (
    METADATA_KEY,
    METADATA_NAMESPACE,
    MODEL_METADATA_KEY,
    PATH_METADATA_KEY,
)
from ..processor import errors, router
from ..processor.cooldown import ProviderHealth
from ..processor.refusals import REDIRECT_PARAMETER, REDIRECTED_HEADER, Redirect, Redirects
from ..processor.retrybudget import RetryBudgets
from . import wire
from .answers import Answers
from .messages import BODY_ONLY, Request, Response, apply_headers, found_in, headers_of, immediate, set_patch, unchanged


class RouterStream:
    """One request at the router level: pick its chain before Envoy routes."""

    def __init__(
        self,
        live: Live,
        health: ProviderHealth | None,
        listener: str,
        answers: Answers | None = None,
        budgets: RetryBudgets | None = None,
        redirects: Redirects | None = None,
    ):
        config = self.config = live.current
        self.health = health
        self.budgets = budgets
        self.redirects = redirects
        #: A request a provider refused, back for its fallback model: what its first pass knew (`processor.refusals`).
        self.redirect: Redirect | None = None
        self.answers = answers
        self.listener = next((item for item in config.listeners if item.name == listener), config.listeners[0])
        self.headers: dict[str, str] = {}
        self.found: router.Found | None = None  # the model Envoy found in the body, and where
        self.reused = False  # answered with the answer kept for the request's shape
        self.reply: errors.Reply | None = None  # set when the sidecar answered the client itself
        self.done = False  # the request is routed (or answered): Envoy needs nothing more from this stream
        #: Whether its servicer may hold it while every provider cools (`on_all_cooling: wait`; not the bulk lane's threads).
        self.may_wait = False
        self.wait_s: float | None = None  # set instead of an answer: wait this long, then handle the message again
        self.over_budget: str | None = None  # its model, when it was sent with no retries (`retry_policy.retry_budget`)
        self.moved: tuple[str, str] | None = None  # (the model asked for, its context-window fallback), when its prompt went there

    def handle(self, request: Request) -> Response:
        kind = wire.kind(request)
        if kind == "request_headers":
            assert not isinstance(request, wire.RequestBody)  # a body message is the only other shape
            headers = self.headers = headers_of(request.request_headers)
            message = request.request_headers
            count = len(message.headers.headers)
            found = self.found = found_in(request)
            if REDIRECTED_HEADER in headers:  # Envoy runs it again after a redirect: only one the upstream level made goes on
                self.redirect = self._redirect_of(headers)
                if self.redirect is None:
                    return self._respond("request_headers", errors.redirect_refused())
            answers = self.answers if self.redirect is None else None
            shape = None
            if found is not None and answers is not None:
                # Everything the decision reads of the request (router.route): the shape its answer is kept by. Not
                # where the model is: the answer says "where Envoy found it" (`set_patch`, `RequestContext.encode`).
                shape = (self.listener.name, found.model, *headers, *(headers.get(name) for name in self.config.owned_headers), headers.get(":method"), headers.get(":path"))
                kept = answers.get(self.config, shape, self.health)
                if kept is not None:
                    # Its method and path passed `router.screen` when it was kept; the rest of the screen differs by request.
                    refused = router.limits(self.listener, headers, count)
                    if refused is not None:
                        return self._respond("request_headers", refused)
                    self.done = self.reused = True
                    return kept
            refused = router.screen(self.config, self.listener, headers, count)
            if refused is not None:
                return self._respond("request_headers", refused)
            decision = router.route(self.config, self.listener, headers, message.end_of_stream, self.health, found, self.budgets, self.redirect)
            response = self._respond("request_headers", decision)
            if shape is not None and answers is not None and isinstance(decision, router.Forward) and decision.reusable:
                answer = response.SerializeToString()
                answers.put(self.config, shape, decision.provider, decision.passed_over, answer)
                return answer
            return response
        if kind == "request_body":
            decision = router.on_body(self.config, self.listener, self.headers, wire.request_body(request), self.health, self.budgets, self.redirect)
            return self._respond("request_body", decision)
        return unchanged(kind)

    def _redirect_of(self, headers: dict[str, str]) -> Redirect | None:
        """The redirect the location's token names, taken up once; None for any other (a provider's own 307, say)."""
        query = urlsplit(headers.get(":path", "")).query
        tokens = parse_qs(query).get(REDIRECT_PARAMETER) if query else None
        return self.redirects.take(tokens[0]) if tokens and self.redirects is not None else None

    @property
    def client_path(self) -> str:
        """The path the client sent (a redirected request's second pass sees the redirect's, token and all)."""
        return self.redirect.path if self.redirect is not None else self.headers.get(":path", "")

    def _respond(self, kind: str, decision: errors.Reply | router.Forward | None) -> pb.ProcessingResponse:
        if isinstance(decision, errors.Reply) and self._waits_for(decision):
            self.wait_s = decision.cooling_s
            return pb.ProcessingResponse()  # never sent: the servicer waits, then asks this stream again
        if isinstance(decision, errors.Reply):
            self.reply = decision = errors.for_client(decision, self.client_path)
            self.done = True
            response = immediate(decision)
            self._log_path(response)
            return response
        response = pb.ProcessingResponse()
        common = getattr(response, kind).response
        common.SetInParent()
        if decision is None:  # the body decides: the small lane sends it only when asked; the others (no overrides allowed) send it anyway
            response.mode_override.CopyFrom(BODY_ONLY)
            return response
        self.done = True
        self.over_budget = decision.model if decision.over_budget else None
        self.moved = (decision.moved_from, decision.model) if decision.moved_from is not None else None
        apply_headers(common.header_mutation, decision.headers)
        common.clear_route_cache = True
        namespace = self._log_path(response)
        found = self.found
        namespace.fields[METADATA_KEY].string_value = decision.context.encode(found.start if found is not None else None)
        namespace.fields[MODEL_METADATA_KEY].string_value = decision.model
        if decision.patch is not None:
            set_patch(namespace, decision.patch, found)
        return response

    def _waits_for(self, reply: errors.Reply) -> bool:
        """Every provider cools and the first is back within the listener's `max_wait`: worth waiting for, once."""
        listener = self.listener
        return self.may_wait and listener.on_all_cooling == "wait" and reply.cooling_s is not None and reply.cooling_s <= listener.max_wait

    def _log_path(self, response: pb.ProcessingResponse) -> struct_pb2.Struct:
        """The client's path, for the access log (by then `:path` is the provider's); returns the metadata namespace."""
        namespace = response.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value
        namespace.fields[PATH_METADATA_KEY].string_value = self.client_path
        return namespace
