"""`$VAR`, `${VAR}` and `${VAR:-default}` in config values (`$$` is a literal `$`)."""

from __future__ import annotations

import re
from collections.abc import Mapping

_PATTERN = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


class UnsetVariable(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def expand(value: str, environ: Mapping[str, str]) -> str:
    """Expand variables in one string; raise `UnsetVariable` for an unset one without default."""

    def substitute(match: re.Match[str]) -> str:
        escaped, braced, default, bare = match.groups()
        if escaped:
            return "$"
        name = braced or bare
        if default is not None and not environ.get(name):
            return default  # shell semantics: unset or empty takes the default
        if name in environ:
            return environ[name]
        raise UnsetVariable(name)

    return _PATTERN.sub(substitute, value)
