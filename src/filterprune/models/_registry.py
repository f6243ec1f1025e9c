"""Model registry: builders registered by name, created with checked keyword arguments.

A builder is a function returning an ``nn.Module`` whose arguments all have names and defaults
(no ``*args`` or ``**kwargs``), so that the accepted keywords can be read from its signature:
the pipeline passes ``num_classes``, ``in_channels`` or ``input_size`` only to the builders that
accept them (see :func:`model_arguments`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import TypeVar, overload

from torch import nn

from filterprune.errors import FilterpruneError
from filterprune.models._external import create_external, external_arguments, is_external

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_ARGUMENTS: dict[str, frozenset[str]] = {}


@overload
def register_model(name_or_fn: Builder) -> Builder: ...


@overload
def register_model(name_or_fn: str | None = None) -> Callable[[Builder], Builder]: ...


def register_model(
    name_or_fn: str | Builder | None = None,
) -> Builder | Callable[[Builder], Builder]:
    """Register a model builder, as ``@register_model`` or ``@register_model("vgg16-lite")``.

    Used bare, the builder is registered under its function name; given a string, under that
    name (for names that are not Python identifiers).

    Args:
        name_or_fn: The builder itself, or the name to register it under, or None.

    Returns:
        The builder unchanged, or a decorator that registers and returns it.

    Raises:
        ValueError: If the name is taken, or the builder takes ``*args`` / ``**kwargs``
            (its keywords could then not be checked).
    """
    if callable(name_or_fn):
        return _register(name_or_fn.__name__, name_or_fn)

    def decorator(fn: Builder) -> Builder:
        return _register(name_or_fn or fn.__name__, fn)

    return decorator


def _register(name: str, fn: Builder) -> Builder:
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    params = inspect.signature(fn).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise ValueError(f"builder for {name!r} must name its arguments (no *args / **kwargs)")
    _MODELS[name] = fn
    _ARGUMENTS[name] = frozenset(p.name for p in params if p.kind != p.POSITIONAL_ONLY)
    return fn


def list_models() -> list[str]:
    """Return the registered model names in natural order (``resnet20`` before ``resnet110``)."""
    return sorted(_MODELS, key=_natural_key)


def _natural_key(name: str) -> list[str | int]:
    # re.split with a group alternates text and digit runs, so keys compare position by position.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise FilterpruneError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}, or timm:NAME, "
            "torchvision:NAME, package.module:callable"
        )


def model_arguments(name: str) -> set[str]:
    """Return the keyword arguments the builder of ``name`` accepts.

    Args:
        name: A registered model name, or an external spec (``timm:NAME``, ``torchvision:NAME``,
            ``package.module:callable``; see ``filterprune.models._external``).

    Returns:
        The keyword names, e.g. ``{"num_classes", "in_channels", "input_size"}`` for ``scnnb``,
        ``{"num_classes", "in_chans"}`` for ``timm:resnet18``.

    Raises:
        FilterpruneError: If ``name`` is not registered, or an external spec does not resolve.
    """
    if is_external(name):
        return external_arguments(name)
    _check_name(name)
    return set(_ARGUMENTS[name])


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the registered model ``name``, or the model an external spec names.

    Args:
        name: A registered model name (see :func:`list_models`), or ``timm:NAME``,
            ``torchvision:NAME`` or ``package.module:callable`` (the package must be installed;
            the callable importable).
        **kwargs: Keyword arguments of the builder (see :func:`model_arguments`).

    Returns:
        A freshly initialised model (or, for an external builder, whatever weights it loads,
        e.g. ``pretrained=True`` for timm).

    Raises:
        FilterpruneError: If ``name`` is not registered or does not resolve, a keyword is not
            accepted by its builder, or an external builder fails or returns no ``nn.Module``.
    """
    if is_external(name):
        return create_external(name, **kwargs)
    _check_name(name)
    unknown = sorted(set(kwargs) - _ARGUMENTS[name])
    if unknown:
        raise FilterpruneError(
            f"model {name!r} takes no argument {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(sorted(_ARGUMENTS[name]))}"
        )
    return _MODELS[name](**kwargs)
