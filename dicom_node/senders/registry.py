"""Destination kinds → sender factories (mercure's `@handler_for`): a new kind is a new module.

Each module registers its factory for its config section type with `@sender_for(SectionType)`;
`dicom_node.senders` imports them all, so `build_sender(section, ctx)` finds every kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from dicom_node.senders.base import Sender, SenderContext

_FACTORIES: dict[type, Callable[[Any, SenderContext], Sender]] = {}
F = TypeVar("F", bound=Callable[[Any, SenderContext], Sender])


def sender_for(section_type: type) -> Callable[[F], F]:
    """Register a factory for destinations configured by `section_type`."""
    def register(factory: F) -> F:
        if section_type in _FACTORIES:
            raise ValueError(f"a sender for {section_type.__name__} is registered twice")
        _FACTORIES[section_type] = factory
        return factory
    return register


def build_sender(section: object, ctx: SenderContext) -> Sender:
    factory = _FACTORIES.get(type(section))
    if factory is None:
        raise ValueError(f"no sender is registered for {type(section).__name__}")
    return factory(section, ctx)


def kinds() -> tuple[type, ...]:
    """The config section types that have a sender."""
    return tuple(_FACTORIES)
