"""The registry of step types, keyed by slug. Step modules in `apps/steps/library/` register themselves."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import ValidationError

from apps.steps.base import StepConfig, StepType

_registry: dict[str, type[StepType]] = {}
_loaded = False


def register(step_type: type[StepType]) -> type[StepType]:
    """Class decorator: make `step_type` available under its slug. Slugs are stable and unique."""
    if step_type.slug in _registry and _registry[step_type.slug] is not step_type:
        raise RuntimeError(f"step type {step_type.slug!r} is registered twice")
    _registry[step_type.slug] = step_type
    return step_type


def _load_library() -> None:
    global _loaded
    if _loaded:
        return
    from apps.steps import library

    for module in pkgutil.iter_modules(library.__path__):
        importlib.import_module(f"{library.__name__}.{module.name}")
    _loaded = True


def step_types() -> dict[str, type[StepType]]:
    """Every registered step type by slug."""
    _load_library()
    return dict(sorted(_registry.items()))


def step_type_find(slug: str) -> type[StepType] | None:
    """The step type named `slug`, or None (a lookup without copying the registry, for hot paths)."""
    _load_library()
    return _registry.get(slug)


def step_type_get(slug: str) -> type[StepType]:
    """The step type named `slug`; KeyError names the unknown slug."""
    _load_library()
    try:
        return _registry[slug]
    except KeyError:
        raise KeyError(f'unknown step type "{slug}"') from None


def step_config_errors(slug: str, config: dict[str, Any]) -> list[str]:
    """Every problem with `config` for step type `slug`, as readable messages (empty when valid)."""
    try:
        step_type = step_type_get(slug)
    except KeyError as error:
        return [str(error.args[0])]
    try:
        parsed = step_type.Config.model_validate(config)
    except ValidationError as error:
        return [f"{'.'.join(str(p) for p in item['loc']) or 'config'}: {item['msg']}" for item in error.errors()]
    return list(step_type.check_config(parsed))


def step_config_parse(slug: str, config: dict[str, Any]) -> StepConfig:
    """The validated config object (raises pydantic's ValidationError when invalid)."""
    return step_type_get(slug).Config.model_validate(config)
