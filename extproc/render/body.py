"""Envoy's side of the request body: find a JSON body's model before the sidecar hears of it, and patch it after.

The sidecar never receives an ordinary request's body (one ext_proc message
per request) and never sends a body back: Envoy checks the JSON
(`json_to_metadata`), a Lua scan finds the top-level `model` and its bytes,
and after the sidecar's decision a Lua filter replaces those bytes with the
provider's model name. docs/envoy-behaviour.md says which Envoy behaviour
each piece rests on.
"""

from __future__ import annotations

from ..contract import (
    BODY_JSON_KEY,
    BODY_MODEL_END_KEY,
    BODY_MODEL_KEY,
    BODY_MODEL_START_KEY,
    BODY_NAMESPACE,
    BULK_CONTENT_LENGTH,
    PATCH_END_KEY,
    PATCH_START_KEY,
    PATCH_VALUE_KEY,
    SMALL_CONTENT_LENGTH,
)
from ..processor.jsonbody import MAX_TOP_LEVEL_KEYS
from .composite import header_input, only_when

_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_JSON_TO_METADATA = "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata"
#: How deep the Lua scan follows nested values; a deeper body goes to the sidecar, which reads ~1000 levels.
_SCAN_MAX_DEPTH = 128


def small_request() -> dict:
    """Requests whose model Envoy finds itself (`SMALL_CONTENT_LENGTH`)."""
    return _content_length(SMALL_CONTENT_LENGTH)


def large_request() -> dict:
    """The bulk lane's requests: content-length of 7 digits or more."""
    return _content_length(BULK_CONTENT_LENGTH)


def _content_length(regex: str) -> dict:
    return {"single_predicate": {"input": header_input("content-length"), "value_match": {"safe_regex": {"google_re2": {}, "regex": regex}}}}


#: Finds a JSON body's top-level `model` string and where its token sits, for the router-level ext_proc
#: (which then never receives the body). It runs after `json_to_metadata` said the whole body is valid JSON,
#: so it only walks the top level, skipping strings and nested values; anything it does not expect (a
#: second `model`, an escape in a key or in the model, more than MAX_TOP_LEVEL_KEYS keys, deep nesting,
#: bytes after the object) leaves no model, and the sidecar asks for the body and decides as before.
_SCAN_LUA = rf"""
local byte = string.byte

local function skip(s, i)
  return s:match("^[ \t\r\n]*()", i)
end

-- The closing quote of the string opening at i: the next quote after an even run of backslashes
-- (plain find runs at memory speed; long text is most of a request).
local function string_end(s, i)
  local j = i + 1
  while true do
    local k = s:find('"', j, true)
    if k == nil then return nil end
    local p = k - 1
    while byte(s, p) == 92 do p = p - 1 end
    if (k - 1 - p) % 2 == 0 then return k end
    j = k + 1
  end
end

-- Just past the value that starts at i; nil when it is not what a request body holds.
local function value_end(s, i)
  local c = byte(s, i)
  if c == 34 then
    local e = string_end(s, i)
    return e and e + 1
  end
  if c ~= 123 and c ~= 91 then
    return s:find("[,}}%]%s]", i)
  end
  local depth, j = 0, i
  while true do
    local q = s:find('"', j, true)
    for k = j, (q or #s + 1) - 1 do
      local b = byte(s, k)
      if b == 123 or b == 91 then
        depth = depth + 1
        if depth > {_SCAN_MAX_DEPTH} then return nil end
      elseif b == 125 or b == 93 then
        depth = depth - 1
        if depth == 0 then return k + 1 end
      end
    end
    if q == nil then return nil end
    local e = string_end(s, q)
    if e == nil then return nil end
    j = e + 1
  end
end

local function find_model(s)
  local i = skip(s, 1)
  if s:byte(i) ~= 123 then return nil end
  i = skip(s, i + 1)
  local keys, first, last = 0, nil, nil
  while true do
    if byte(s, i) ~= 34 then return nil end
    local e = string_end(s, i)
    if e == nil then return nil end
    local key = s:sub(i + 1, e - 1)
    if key:find("\\", 1, true) then return nil end
    i = skip(s, e + 1)
    if s:byte(i) ~= 58 then return nil end
    local start = skip(s, i + 1)
    local stop = value_end(s, start)
    if stop == nil then return nil end
    keys = keys + 1
    if keys > {MAX_TOP_LEVEL_KEYS} then return nil end
    if key == "model" then
      if first ~= nil then return nil end
      first, last = start, stop
    end
    i = skip(s, stop)
    if s:byte(i) == 125 then break end
    if s:byte(i) ~= 44 then return nil end
    i = skip(s, i + 1)
  end
  if skip(s, i + 1) <= #s or first == nil or s:byte(first) ~= 34 then return nil end
  local token = s:sub(first, last - 1)
  if token:find("\\", 1, true) then return nil end
  return first - 1, last - 1, token:sub(2, -2)
end

function envoy_on_request(handle)
  local found = handle:streamInfo():dynamicMetadata():get("{BODY_NAMESPACE}")
  if found == nil or found["{BODY_JSON_KEY}"] ~= "valid" then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  local first, last, model = find_model(body:getBytes(0, body:length()))
  if first ~= nil then
    local metadata = handle:streamInfo():dynamicMetadata()  -- got after body(): Lua objects do not outlive a yield
    metadata:set("{BODY_NAMESPACE}", "{BODY_MODEL_KEY}", model)
    metadata:set("{BODY_NAMESPACE}", "{BODY_MODEL_START_KEY}", first)
    metadata:set("{BODY_NAMESPACE}", "{BODY_MODEL_END_KEY}", last)
  end
end
"""

#: Content types `json_to_metadata` reads (it matches them exactly); a body of any other type goes to the sidecar.
_JSON_CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"]


def find_model() -> list[dict]:
    """Envoy checks a request's JSON and finds its model before the router-level ext_proc: one message per request.

    `json_to_metadata` runs only on small requests (`small_request`, the
    router's lane that waits for it): Envoy's JSON parser
    holds its worker, and every request behind it, about 20 ns a byte. Never
    on a CONNECT (no content-length: it would wait forever for a body). The
    Lua scan runs only after it said "valid".
    """
    valid = {"metadata_namespace": BODY_NAMESPACE, "key": BODY_JSON_KEY, "value": "valid"}
    json_check = {
        "name": "envoy.filters.http.json_to_metadata",
        "typed_config": {
            "@type": _JSON_TO_METADATA,
            "request_rules": {
                "rules": [{"selectors": [{"key": "model"}], "on_present": valid, "on_missing": valid, "on_error": {**valid, "value": "invalid"}}],
                "allow_content_types": _JSON_CONTENT_TYPES,
            },
        },
    }
    return [
        only_when("extproc.json_check", small_request(), "json_check", json_check),
        {"name": "extproc.find_model", "typed_config": {"@type": _LUA, "default_source_code": {"inline_string": _SCAN_LUA.lstrip()}}},
    ]


def model_patch(namespace: str, strip: tuple[str, ...] = ()) -> dict:
    """Applies a model patch the sidecar left in `namespace` to the buffered body: the body never travels back over gRPC.

    (Receiving a 10 MiB body mutation held Envoy's worker, and every small
    request behind it, ~100 ms.) At the router level it patches what every
    attempt is sent; at the upstream level, one retry's copy. A retry always
    has the namespace (an empty value: no patch) and always gets its own
    `content-length`: Envoy keeps one header map for all attempts, so an
    earlier attempt's patched or translated length would otherwise stay.
    `strip`: Envoy's own headers of an attempt that no provider is sent.
    A patch without a start and end replaces the model where Envoy found it
    (`find_model`), so the sidecar's answer does not depend on where that is.
    """
    removals = "".join(f'  handle:headers():remove("{name}")\n' for name in strip)
    lua = f"""
function envoy_on_request(handle)
{removals}  local patch = handle:streamInfo():dynamicMetadata():get("{namespace}")
  if patch == nil or patch["{PATCH_VALUE_KEY}"] == nil then
    return
  end
  local value = patch["{PATCH_VALUE_KEY}"]
  local first, last = patch["{PATCH_START_KEY}"], patch["{PATCH_END_KEY}"]
  if first == nil then  -- the model is where Envoy found it
    local found = handle:streamInfo():dynamicMetadata():get("{BODY_NAMESPACE}")
    if found == nil then
      return
    end
    first, last = found["{BODY_MODEL_START_KEY}"], found["{BODY_MODEL_END_KEY}"]
  end
  local body = handle:body()
  if body == nil then
    return
  end
  local length = body:length()
  if value ~= "" then
    body:setBytes(body:getBytes(0, first) .. value .. body:getBytes(last, length - last))
    length = body:length()
  end
  handle:headers():replace("content-length", tostring(length))
end
"""
    return {"name": "extproc.model_patch", "typed_config": {"@type": _LUA, "default_source_code": {"inline_string": lua.lstrip()}}}
