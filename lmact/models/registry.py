"""Model names to clients: `local/<name or path>`, the hosted providers, and plugins.

A name is `<provider>/<model>`; `random` and `expert` are scripted policies
(`lmact.policies`), listed here with the names a user may give. Built-in
providers are listed below; a third-party package adds one by registering its client class
under the entry-point group `lmact.models`, with the provider name as the entry-point name.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

from lmact.errors import LmactError, UnknownNameError
from lmact.models.base import ModelClient, ModelOptions

ENTRY_POINT_GROUP = "lmact.models"

BUILTIN_PROVIDERS: dict[str, str] = {
    "local": "lmact.models.local:LocalModel",
    "openai": "lmact.models.openai:OpenAIModel",
    "anthropic": "lmact.models.anthropic:AnthropicModel",
    "google": "lmact.models.google:GoogleModel",
    "openai-compatible": "lmact.models.openai_compatible:OpenAICompatibleModel",
}
DEFAULT_MODEL = "local/gemma-3-270m"

ACCEPTED_NAMES = [
    "local/gemma-3-270m",
    "local/<path to a .gguf file>",
    "openai/<model>",
    "anthropic/<model>",
    "google/<model>",
    "openai-compatible/<model>",
    "random",
    "expert",
    "ucb1",
    "thompson",
    "greedy",
    "epsilon-greedy",
]


def providers() -> dict[str, str]:
    """Provider name -> "module:Class", plugins included (a plugin cannot shadow a built-in)."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return found | BUILTIN_PROVIDERS


def accepted_model_names() -> list[str]:
    plugins = sorted(set(providers()) - set(BUILTIN_PROVIDERS))
    return ACCEPTED_NAMES + [f"{name}/<model>" for name in plugins]


def _load_class(target: str) -> type[ModelClient]:
    module_name, _, class_name = target.partition(":")
    try:
        client_class = getattr(import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise LmactError(f"model provider {target!r} cannot be loaded: {error}") from None
    if not (isinstance(client_class, type) and issubclass(client_class, ModelClient)):
        raise LmactError(f"model provider {target!r} is not a lmact ModelClient subclass")
    return client_class


def resolve_model(name: str, options: ModelOptions | None = None) -> ModelClient:
    """The client for a model name; a one-line LmactError for a name that does not resolve."""
    provider, _, model = name.partition("/")
    known = providers()
    if provider not in known:
        raise UnknownNameError("model", name, accepted_model_names())
    if not model:
        raise LmactError(f"model {name!r} names a provider but no model; write {provider}/<model>")
    return _load_class(known[provider])(name, options or ModelOptions())
