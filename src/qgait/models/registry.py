"""A registry of gait models by name, so that configs and the CLI name models (as timm does)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

_MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a model under ``name`` (lower case)."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        key = name.lower()
        if key in _MODELS and _MODELS[key] is not cls:
            raise ValueError(f"model name {name!r} is already registered")
        _MODELS[key] = cls
        return cls

    return deco


def available_models() -> list[str]:
    """Sorted names of the registered models."""
    return sorted(_MODELS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model from its arguments alone (no data, no optimizer).

    Raises:
        ValueError: unknown model name, or an argument the model does not take (listing the ones it does).
    """
    key = name.lower()
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    cls = _MODELS[key]
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = [p for p in params if p != "self"]
        raise ValueError(f"model {name!r} has no argument(s) {unknown}; it takes {allowed}")
    return cls(**kwargs)
