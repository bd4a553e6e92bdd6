"""Azure OpenAI: OpenAI's API behind an `api-key` header, on Azure's v1 path or a deployment's.

With `api_version`, `model: azure/<deployment>` is sent to
`/openai/deployments/<deployment>/<the client's path without /v1>?api-version=…`
(chat completions, embeddings and every other OpenAI path alike); without it,
the client's path goes under base_url's path as for any OpenAI-compatible
provider (Azure's v1 API: `base_url: https://<resource>.openai.azure.com/openai/v1`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from .kind import Kind, without_version

if TYPE_CHECKING:
    from ..config.model import Provider


def api_key(key: str) -> tuple[str, str]:
    return "api-key", key


def deployment_path(provider: Provider, path: str) -> str:
    if provider.api_version is None:
        return provider.prefixed_path(path)
    route, _, query = path.partition("?")
    route = without_version(route)
    version = urlencode({"api-version": provider.api_version})
    deployment = quote(provider.model_name, safe="")
    return f"{provider.path_prefix}/openai/deployments/{deployment}{route}?{query + '&' if query else ''}{version}"


def _azure(name: str) -> Kind:
    return Kind(
        name, credential=api_key, telemetry_name="azure.ai.openai", max_tokens_field="max_completion_tokens", config_keys=frozenset({"api_version"}), path=deployment_path
    )


KINDS = (_azure("azure_openai"), _azure("azure"))
