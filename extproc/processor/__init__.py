"""The processor: what the gateway decides, as pure functions over plain data.

`router` picks a request's chain (once per request); `upstream` rebuilds each
attempt for its provider, with `headermutator` (restore originals, drop what
earlier attempts added), `backendauth` (credentials) and `jsonbody` (the model
name in the body).
"""
