"""Load the YAML config: read, expand `$VAR`s, validate (`schema`), resolve (`resolve`) into a frozen `Config`.

Every problem is reported with the file, the key path and the reason, and all
problems of a file are reported at once, so one `extproc check` run shows
everything to fix.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .envsubst import UnsetVariable, expand
from .model import Config, ProviderError
from .resolve import Problem, Resolver
from .schema import Checked, ConfigFile, Duration, Provider, Section, kind

#: Plano keys for features this gateway does not have: refused by name, with why, rather than as unknown keys.
PLANO_ONLY_KEYS = {
    "agents", "filters", "endpoints", "prompt_targets", "prompt_guards", "system_prompt", "ratelimits", "mode",
    "routing", "routing_preferences", "state_storage",
}  # fmt: skip
PROVIDER_KEYS = ("model_providers", "llm_providers")
#: libyaml's safe loader where PyYAML was built with it (its wheels are): 6× faster on a config of 5,000 providers.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(Exception):
    """The config cannot be used; `problems` says where and why."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{source}: invalid configuration:\n{lines}")


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, lenient: bool = False) -> Config:
    """Read and resolve a config file; raise `ConfigError` on any problem (see `parse_config`)."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(source, [Problem("", f"cannot read the file: {exc.strerror or exc}")]) from exc
    return parse_config(text, source, os.environ if environ is None else environ, lenient)


def parse_config(text: str, source: str, environ: Mapping[str, str], lenient: bool = False) -> Config:
    """Resolve a config text.

    Strict (the default, and `extproc check`): any problem fails. Lenient (a
    running sidecar loading or reloading): a provider entry that is invalid on
    its own is left out and reported in `Config.provider_errors`; the others
    still load. Problems outside a provider entry always fail.
    """
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [Problem("", f"not valid YAML: {where}{getattr(exc, 'problem', exc)}")]) from exc
    if data is None:
        raise ConfigError(source, [Problem("", "the file is empty")])
    if not isinstance(data, dict):
        raise ConfigError(source, [Problem("(top level)", f"expected a mapping, got {kind(data)}")])
    config, problems = _resolve(data, source, environ)
    if config is not None:
        return config
    entries = _entry_problems(problems) if lenient else None
    if not entries:
        raise ConfigError(source, problems)
    # Again without the broken entries; what they were is kept as provider errors.
    key = next(key for key in PROVIDER_KEYS if key in data)
    raw = data[key]
    kept = [item for index, item in enumerate(raw) if index not in entries]
    dropped = frozenset({_entry_field(raw[index], "model") for index in entries} - {_entry_field(item, "model") for item in kept})
    config, _ = _resolve({**data, key: kept}, source, environ, dropped)
    if config is None:
        raise ConfigError(source, problems)
    errors = tuple(
        ProviderError(
            _entry_field(raw[index], "name") or f"{key}[{index}]",
            _entry_field(raw[index], "model"),
            "; ".join([*(str(problem) for problem in found), *_lost_fallbacks(config, _entry_field(raw[index], "model"))]),
        )
        for index, found in sorted(entries.items())
    )
    return dataclasses.replace(config, provider_errors=errors)


def _resolve(data: dict, source: str, environ: Mapping[str, str], dropped: frozenset[str] = frozenset()) -> tuple[Config | None, list[Problem]]:
    problems = [Problem(key, "a Plano feature this gateway does not have (it routes model traffic, with failover): remove it") for key in sorted(PLANO_ONLY_KEYS & data.keys())]
    data = {key: value for key, value in data.items() if key not in PLANO_ONLY_KEYS}
    if all(key in data for key in PROVIDER_KEYS):
        problems.append(Problem("llm_providers", "give model_providers or llm_providers (Plano's older name), not both"))
    elif not any(key in data for key in PROVIDER_KEYS):
        problems.append(Problem("model_providers", "required key is missing"))
    key = next((key for key in PROVIDER_KEYS if key in data), PROVIDER_KEYS[0])
    unset: list[Problem] = []
    expanded = _expand(data, (), environ, unset)
    found: list[Problem] = []
    # Each provider entry is validated on its own, so one broken entry hides nothing about the others.
    raw = expanded.get(key)
    entries = raw if isinstance(raw, list) else []
    valid: list[tuple[int, Provider]] = []
    for index, entry in enumerate(entries):
        try:
            valid.append((index, Provider.model_validate(entry)))
        except ValidationError as error:
            found += problems_from(error, (key, index))
    file = None
    try:
        file = ConfigFile.model_validate({**expanded, key: []} if isinstance(raw, list) else expanded)
    except ValidationError as error:
        found += problems_from(error)
    unset_paths = {problem.path for problem in unset}
    problems += [problem for problem in found if problem.path not in unset_paths] + unset
    if file is None:
        return None, _in_file_order(problems)
    resolver = Resolver(source, environ, key, dropped)
    declared = {item["model"] for item in entries if isinstance(item, dict) and isinstance(item.get("model"), str)}
    config = resolver.config(file, valid, declared)
    problems = _in_file_order(problems + resolver.problems)
    if config is not None:
        config = dataclasses.replace(config, warnings=(*_as_written(data, ()), *config.warnings))
    return (config, problems) if not problems else (None, problems)


def _typed_keys() -> tuple[frozenset[str], frozenset[str]]:
    """The keys the schema reads as durations (`Duration`), and those it reads as plain integers (`schema.integer`)."""
    duration = typing.get_args(Duration)[1]
    durations, integers = set(), set()
    sections: list[type[BaseModel]] = [*Section.__subclasses__(), ConfigFile]
    for section in sections:
        for name, field in section.model_fields.items():
            checks = [*field.metadata, *(item for arg in typing.get_args(field.annotation) for item in getattr(arg, "__metadata__", ()))]
            if any(check is duration for check in checks):
                durations.add(name)
            elif any(isinstance(check, Checked) and check.check.__qualname__.startswith("integer.") for check in checks):
                integers.add(name)
    return frozenset(durations), frozenset(integers)


_DURATION_KEYS, _INTEGER_KEYS = _typed_keys()


def _as_written(value: Any, loc: tuple) -> list[str]:
    """Values the file writes loosely, read as meant but worth a warning: a duration without a unit, a quoted number."""
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            if key in _DURATION_KEYS and isinstance(item, (int, float)) and not isinstance(item, bool):
                found.append(f"{_path((*loc, key))}: {item} has no unit: read as {item} seconds (write {item}s)")
            elif key in _INTEGER_KEYS and isinstance(item, str) and "$" not in item:
                found.append(f"{_path((*loc, key))}: {item!r} is a string: read as a number (write it unquoted)")
            else:
                found += _as_written(item, (*loc, str(key)))
        return found
    if isinstance(value, list):
        return [warning for index, item in enumerate(value) for warning in _as_written(item, (*loc, index))]
    return []


def _expand(value: Any, loc: tuple, environ: Mapping[str, str], unset: list[Problem]) -> Any:
    """`value` with `$VAR`s expanded in every string; an unset variable is recorded (and its string kept as written)."""
    if isinstance(value, str):
        try:
            return expand(value, environ)
        except UnsetVariable as exc:
            unset.append(Problem(_path(loc), f"environment variable {exc.name} is not set (give a default with ${{{exc.name}:-value}})", environmental=True))
            return value
    if isinstance(value, dict):
        return {key: _expand(item, (*loc, str(key)), environ, unset) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, (*loc, index), environ, unset) for index, item in enumerate(value)]
    return value


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    """Problems in the order of the file's top-level sections, then as found (stable)."""
    order = {"listeners": 0, "model_providers": 1, "llm_providers": 1}
    return sorted(problems, key=lambda problem: order.get(problem.path.split(".")[0].split("[")[0], 2))


_MESSAGES = {
    "missing": "required key is missing",
    "bool_type": "expected true or false, got {kind}",
    "string_type": "expected a string, got {kind}",
    "int_type": "expected an integer, got {kind}",
    "float_type": "expected a number, got {kind}",
    "list_type": "expected a list, got {kind}",
    "dict_type": "expected a mapping, got {kind}",
    "model_type": "expected a mapping, got {kind}",
    "model_attributes_type": "expected a mapping, got {kind}",
}


def problems_from(error: ValidationError, at: tuple = ()) -> list[Problem]:
    """Pydantic's errors in this file's voice: `listeners[0].port: 70000 is out of range: ...` (`at`: where the validated value sits)."""
    problems = []
    for item in error.errors(include_url=False):
        loc = at + tuple(part for part in item["loc"] if part != "[key]")
        if item["type"] == "config":
            message = item["ctx"]["reason"]
        elif item["type"] == "extra_forbidden":
            section = _section_at(loc[:-1])
            message = section.unknown_key.format(allowed=", ".join(sorted(section.model_fields)))
        elif item["type"] in _MESSAGES:
            message = _MESSAGES[item["type"]].format(kind=kind(item.get("input")))
        elif item["type"] == "literal_error":
            message = f"{item.get('input')!r} must be {item['ctx']['expected']}"
        else:
            message = item["msg"]
        if not loc and item["type"] in ("model_type", "dict_type"):
            loc = ("(top level)",)
        problems.append(Problem(_path(loc), message))
    return problems


def _section_at(loc: tuple) -> type[Section]:
    """The schema model that validates the mapping at `loc` (to list the keys it allows)."""
    section: Any = ConfigFile
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = section.model_fields[part].annotation
        section = next(_models_in(annotation), section)
    return section


def _models_in(annotation: Any):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in getattr(annotation, "__args__", ()):
        yield from _models_in(argument)


def _path(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _entry_problems(problems: list[Problem]) -> dict[int, list[Problem]] | None:
    """Problems by provider entry, or None when any problem is not local to one entry."""
    entries: dict[int, list[Problem]] = {}
    for problem in problems:
        head, _, rest = problem.path.partition("[")
        if head not in PROVIDER_KEYS or not rest or problem.environmental:
            return None
        entries.setdefault(int(rest.partition("]")[0]), []).append(problem)
    return entries


def _lost_fallbacks(config: Config, model: str) -> list[str]:
    """What a left-out entry costs other chains: the models that fell back to its model, now served by nobody."""
    if model in config.models:
        return []
    losers = sorted({provider.model for provider in config.providers.values() if provider.retry_policy and model in provider.retry_policy.fallback_models})
    return [f"{loser} no longer falls back to {model} (no valid provider serves it)" for loser in losers]


def _entry_field(item: Any, key: str) -> str:
    value = item.get(key) if isinstance(item, dict) else None
    return value if isinstance(value, str) else ""
