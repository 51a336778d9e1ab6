"""The catalogue: every target the router may send a request to, and the names that reach them.

A *target* is one model at one place: ``local/<model>`` for a model this process serves, or
``<provider>/<model>`` for a model behind an upstream API. A client names a target
(``acme/gpt-4o-mini``), a model (``gpt-4o-mini``: every target serving it), or a group
(``auto``). :meth:`Catalogue.resolve` turns the name into a :class:`Selection`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from helixflow.config import ModelConfig, Settings
from helixflow.errors import ModelNotFoundError
from helixflow.routing_config import (
    DEFAULT_CAPABILITIES,
    GroupConfig,
    ProviderConfig,
    ProviderModelConfig,
    TargetTraits,
)

LOCAL: Literal["local"] = "local"
DEFAULT_CATEGORY = "general"
DEFAULT_QUALITY = 0.5
"""Quality assumed for a target that declares none for the category asked."""

TargetKind = Literal["local", "upstream"]


@dataclass(frozen=True, slots=True)
class Target:
    """One model at one place, with what the router needs to choose it."""

    id: str
    """``<provider>/<model>``: the name in headers, decisions and metrics."""
    model: str
    """The model name clients send (the local model id, or the provider's model name)."""
    provider: str
    """``local`` or the provider's name."""
    upstream_model: str
    kind: TargetKind
    capabilities: frozenset[str]
    context_window: int | None = None
    input_price_per_mtok: float = 0.0
    output_price_per_mtok: float = 0.0
    quality: Mapping[str, float] = field(default_factory=dict)
    region: str | None = None
    weight: float = 1.0
    max_concurrency: int | None = None
    fallbacks: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    @property
    def local(self) -> bool:
        return self.kind == LOCAL

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    def score(self, category: str = DEFAULT_CATEGORY) -> float:
        """Quality for a task category: its own score, else ``general``, else 0.5."""
        return self.quality.get(category, self.quality.get(DEFAULT_CATEGORY, DEFAULT_QUALITY))

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """US dollars for a request of that size."""
        return (
            prompt_tokens * self.input_price_per_mtok
            + completion_tokens * self.output_price_per_mtok
        ) / 1_000_000


def _traits(traits: TargetTraits, default_capabilities: Iterable[str]) -> dict[str, object]:
    return {
        "capabilities": frozenset(traits.capabilities or default_capabilities),
        "context_window": traits.context_window,
        "input_price_per_mtok": traits.input_price_per_mtok,
        "output_price_per_mtok": traits.output_price_per_mtok,
        "quality": MappingProxyType(dict(traits.quality)),
        "region": traits.region,
        "weight": traits.weight,
        "fallbacks": tuple(traits.fallbacks),
    }


def local_target(config: ModelConfig) -> Target:
    capabilities = ["embeddings"] if config.embedding else DEFAULT_CAPABILITIES
    return Target(
        id=f"{LOCAL}/{config.id}",
        model=config.id,
        provider=LOCAL,
        upstream_model=config.id,
        kind=LOCAL,
        max_concurrency=config.max_concurrency or config.parallel,
        aliases=tuple(config.aliases),
        **_traits(config, capabilities),  # type: ignore[arg-type]
    )


def upstream_target(provider: ProviderConfig, model: ProviderModelConfig) -> Target:
    traits = _traits(model, DEFAULT_CAPABILITIES)
    traits["region"] = model.region or provider.region
    traits["weight"] = model.weight * provider.weight
    return Target(
        id=f"{provider.name}/{model.name}",
        model=model.name,
        provider=provider.name,
        upstream_model=model.name,
        kind="upstream",
        max_concurrency=model.max_concurrency or provider.max_concurrency,
        aliases=tuple(model.aliases),
        **traits,  # type: ignore[arg-type]
    )


@dataclass(frozen=True, slots=True)
class Group:
    """A virtual model: the router chooses among ``targets`` with ``strategy``."""

    name: str
    targets: tuple[Target, ...]
    strategy: str
    options: Mapping[str, object]
    affinity: str


@dataclass(frozen=True, slots=True)
class Selection:
    """What a requested name resolves to."""

    requested: str
    candidates: tuple[Target, ...]
    """Targets the router may choose among (one for a concrete target)."""
    fallbacks: tuple[Target, ...]
    """Tried after the candidates, in this order."""
    strategy: str
    options: Mapping[str, object]
    affinity: str
    group: str | None = None
    """The group's name when a group was asked for."""

    @property
    def choosing(self) -> bool:
        """Whether the router picks (a group, or a model several providers serve)."""
        return len(self.candidates) > 1 or self.group is not None


class Catalogue:
    """Targets and groups, built once from the settings (and the catalogue tables)."""

    def __init__(
        self,
        targets: Iterable[Target],
        groups: Iterable[GroupConfig] = (),
        *,
        default_strategy: str = "weighted",
    ) -> None:
        self._targets: dict[str, Target] = {}
        self._by_name: dict[str, list[Target]] = {}
        for target in targets:
            if target.id in self._targets:
                raise ValueError(f"target {target.id!r} is defined twice")
            self._targets[target.id] = target
            for name in (target.model, *target.aliases):
                self._by_name.setdefault(name, []).append(target)
        self._default_strategy = default_strategy
        self._groups: dict[str, Group] = {}
        for config in groups:
            if config.name in self._targets or config.name in self._by_name:
                raise ValueError(f"group {config.name!r} has the name of a model")
            members = self._expand(config.targets)
            self._groups[config.name] = Group(
                config.name,
                members,
                config.strategy,
                MappingProxyType(dict(config.options)),
                config.affinity,
            )
        for target in self._targets.values():
            for name in target.fallbacks:
                if not self._named(name):
                    raise ValueError(
                        f"target {target.id!r} falls back to {name!r}, which is not in the "
                        "catalogue"
                    )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        local: Iterable[Target] | None = None,
        extra: Iterable[Target] = (),
    ) -> Catalogue:
        """Local models (``local``, default: from the settings), every enabled provider's
        models, then ``extra`` (from the database)."""
        targets = list(local) if local is not None else [local_target(m) for m in settings.models]
        for provider in settings.providers:
            if provider.enabled:
                targets.extend(upstream_target(provider, m) for m in provider.model_configs())
        known = {t.id for t in targets}
        targets.extend(t for t in extra if t.id not in known)
        return cls(
            targets, settings.router.groups, default_strategy=settings.router.default_strategy
        )

    def _expand(self, patterns: Iterable[str]) -> tuple[Target, ...]:
        members: dict[str, Target] = {}
        for pattern in patterns:
            if pattern == "*":
                matched = [t for t in self._targets.values() if not t.supports("embeddings")]
            elif "*" in pattern or "?" in pattern:
                matched = [t for t in self._targets.values() if fnmatch.fnmatchcase(t.id, pattern)]
            else:
                matched = self._named(pattern)
            if not matched:
                raise ValueError(f"group member {pattern!r} matches no model")
            for target in matched:
                members.setdefault(target.id, target)
        return tuple(members.values())

    def _named(self, name: str) -> list[Target]:
        """The target called ``name`` (``provider/model``), else every target of the model."""
        target = self._targets.get(name)
        return [target] if target is not None else list(self._by_name.get(name, ()))

    # --- lookups ---------------------------------------------------------------------------

    def resolve(self, name: str) -> Selection:
        """The targets a request for ``name`` may go to (404 when there are none)."""
        group = self._groups.get(name)
        if group is not None:
            return Selection(
                name, group.targets, (), group.strategy, group.options, group.affinity, name
            )
        candidates = tuple(self._named(name))
        if not candidates:
            raise ModelNotFoundError(name)
        return Selection(
            name,
            candidates,
            self._fallbacks(candidates),
            self._default_strategy,
            MappingProxyType({}),
            "session",
        )

    def _fallbacks(self, candidates: tuple[Target, ...]) -> tuple[Target, ...]:
        seen = {t.id for t in candidates}
        out: list[Target] = []
        for target in candidates:
            for name in target.fallbacks:
                for fallback in self._named(name):
                    if fallback.id not in seen:
                        seen.add(fallback.id)
                        out.append(fallback)
        return tuple(out)

    def target(self, target_id: str) -> Target | None:
        return self._targets.get(target_id)

    def group(self, name: str) -> Group | None:
        return self._groups.get(name)

    @property
    def groups(self) -> Mapping[str, Group]:
        return MappingProxyType(self._groups)

    @property
    def targets(self) -> Mapping[str, Target]:
        return MappingProxyType(self._targets)

    def __iter__(self) -> Iterator[Target]:
        return iter(self._targets.values())

    def __len__(self) -> int:
        return len(self._targets)

    def upstream(self) -> list[Target]:
        return [t for t in self._targets.values() if not t.local]
