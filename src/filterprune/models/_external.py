"""Models from outside the zoo: ``timm:NAME``, ``torchvision:NAME`` and ``package.module:callable``.

A model name is either a zoo name (``resnet56``) or one of these specs. timm and torchvision are
optional: they are imported only when a spec names them. An import path names a builder that must
already be importable (installed, or on ``PYTHONPATH``); importing it runs the module's code, so a
model file that records such a spec only *names* the builder, it never carries code.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable

from torch import nn

from filterprune.errors import FilterpruneError

TIMM, TORCHVISION = "timm", "torchvision"


def is_external(name: str) -> bool:
    """True for ``timm:NAME``, ``torchvision:NAME`` and ``package.module:callable`` specs."""
    return ":" in name


def _import(package: str):
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise FilterpruneError(
            f"model specs '{package}:NAME' need the {package} package, which is not installed "
            f"(pip install {package}): {e}"
        ) from e


def _unknown(kind: str, name: str, known: list[str]) -> FilterpruneError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return FilterpruneError(f"unknown {kind} model {name!r}{hint}")


def _builder(spec: str) -> tuple[Callable[..., nn.Module], frozenset[str]]:
    """The callable a spec names and the keywords its signature is known to accept."""
    prefix, _, name = spec.partition(":")
    if not prefix or not name:
        raise FilterpruneError(
            f"malformed model spec {spec!r}: expected timm:NAME, torchvision:NAME or "
            "package.module:callable"
        )
    if prefix == TIMM:
        timm = _import(TIMM)
        if not timm.is_model(name):
            raise _unknown("timm", name, timm.list_models())
        return (lambda **kw: timm.create_model(name, **kw)), frozenset({"num_classes", "in_chans"})
    if prefix == TORCHVISION:
        models = _import(f"{TORCHVISION}.models")
        known = models.list_models()
        if name not in known:
            raise _unknown("torchvision", name, known)
        return (lambda **kw: models.get_model(name, **kw)), frozenset({"num_classes"})
    try:
        target = importlib.import_module(prefix)
    except Exception as e:  # the user's module may raise anything while importing
        raise FilterpruneError(f"cannot import {prefix!r} for model {spec!r}: {e}") from e
    for part in name.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise FilterpruneError(f"module {prefix!r} has no attribute {name!r}")
    if not callable(target):
        raise FilterpruneError(f"{spec!r} is not callable")
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        params = []
    accepted = frozenset(
        p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )
    return target, accepted


def external_arguments(spec: str) -> set[str]:
    """The keywords an external builder is known to accept: ``num_classes`` and ``in_chans``
    for timm, ``num_classes`` for torchvision, the named parameters of an import path's callable.

    Raises:
        FilterpruneError: the package is missing, the name unknown, or the path does not import.
    """
    return set(_builder(spec)[1])


def create_external(spec: str, **kwargs: object) -> nn.Module:
    """Build the model an external spec names, with ``kwargs`` passed to its builder.

    Args:
        spec: ``timm:NAME`` (``timm.create_model``; e.g. ``pretrained=True`` where the hub is
            reachable), ``torchvision:NAME`` (``torchvision.models.get_model``; e.g.
            ``weights="DEFAULT"``) or ``package.module:callable`` (any importable builder; a
            dotted attribute path after the colon is allowed).
        **kwargs: keyword arguments of the builder.

    Returns:
        The model the builder returned.

    Raises:
        FilterpruneError: the package is missing, the name is unknown, the path does not import,
            the builder refuses its arguments or fails, or it returns no ``nn.Module``.
    """
    builder, _ = _builder(spec)
    try:
        model = builder(**kwargs)
    except Exception as e:  # a third-party builder may raise anything; say which and why
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FilterpruneError(f"building model {spec!r} failed: {first}") from e
    if not isinstance(model, nn.Module):
        raise FilterpruneError(
            f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def pretrained_arguments(spec: str) -> dict[str, object]:
    """The builder keywords that load a spec's pretrained weights from its hub: timm's
    ``pretrained=True``, torchvision's ``weights="DEFAULT"``.

    Raises:
        FilterpruneError: a zoo name or import path (they have no hub).
    """
    prefix = spec.partition(":")[0] if is_external(spec) else None
    if prefix == TIMM:
        return {"pretrained": True}
    if prefix == TORCHVISION:
        return {"weights": "DEFAULT"}
    raise FilterpruneError(
        f"pretrained weights come from timm's or torchvision's hub; {spec!r} has none "
        "(give its weights file instead, --weights / model.weights)"
    )


def default_input_shape(spec: str, model: nn.Module) -> tuple[int, ...] | None:
    """The input shape ``(1, C, H, W)`` an external model declares (timm's ``pretrained_cfg``),
    (1, 3, 224, 224) for torchvision's ImageNet classifiers, else None."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if size is not None and len(size) == 3:
        return (1, *map(int, size))
    if spec.startswith(f"{TORCHVISION}:"):
        return (1, 3, 224, 224)
    return None
