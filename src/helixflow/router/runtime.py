"""Everything the router needs at run time, built once in the app's lifespan.

``RouterRuntime.open`` builds the catalogue (local models, configured providers, models an
administrator added to the database), syncs it to the ``models``/``providers`` tables, opens
one pooled session per provider, loads the agents' assignments, and starts the background
work: active health probes and alert rules. ``close`` stops it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from helixflow.config import Settings
from helixflow.errors import ConfigurationError, UpstreamError
from helixflow.providers.openai_compat import OpenAICompatProvider
from helixflow.router.alerts import AlertMonitor
from helixflow.router.cache import ResponseCache, build_cache
from helixflow.router.catalogue import Catalogue, Target, local_target
from helixflow.router.dispatch import Dispatcher
from helixflow.router.health import HealthBoard
from helixflow.router.router import Router
from helixflow.router.strategies import make_strategy
from helixflow.store.database import Database
from helixflow.store.repositories.agents import AgentRepository
from helixflow.store.repositories.alerts import AlertRepository
from helixflow.store.repositories.catalogue import CatalogueRepository

log = logging.getLogger(__name__)

LocalInfo = Callable[[str], tuple[int | None, int]]
"""model id -> (context window, requests waiting) of a local model."""


@dataclass(slots=True)
class RouterRuntime:
    router: Router
    dispatcher: Dispatcher
    providers: dict[str, OpenAICompatProvider]
    cache: ResponseCache | None
    alerts: AlertMonitor | None
    _probe_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, settings: Settings, database: Database | None, local: LocalInfo
    ) -> RouterRuntime:
        config = settings.router
        providers: dict[str, OpenAICompatProvider] = {}
        for provider in settings.providers:
            if not provider.enabled:
                continue
            try:
                api_key = provider.api_key()
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from exc
            providers[provider.name] = OpenAICompatProvider(provider, api_key)
        targets = [
            _with_context(local_target(model), local(model.id)[0]) for model in settings.models
        ]
        catalogue = _catalogue(settings, targets)
        if database is not None:
            catalogue = await _with_database(settings, database, catalogue, set(providers))
        health = HealthBoard(
            catalogue,
            config.breaker,
            alpha=config.ewma_alpha,
            queue_depth=lambda target: local(target.model)[1],
        )
        router = Router(catalogue, health, config)
        if database is not None:
            try:
                await router.set_assignments(await AgentRepository(database).active_assignments())
            except Exception as exc:  # the router works without them
                log.warning("could not load agent assignments: %s", exc)
        for provider_client in providers.values():
            await provider_client.start()
        alerts = None
        if config.alerts.enabled:
            alerts = AlertMonitor(
                config.alerts,
                health.windows,
                AlertRepository(database) if database is not None else None,
            )
            alerts.start()
        runtime = cls(
            router,
            Dispatcher(router, config.retry),
            providers,
            build_cache(config.cache, settings.redis.url),
            alerts,
        )
        if any(p.config.probe for p in providers.values()):
            runtime._probe_task = asyncio.create_task(runtime._probe_loop(), name="router-probes")
        log.info(
            "router: %d target(s) (%d upstream over %d provider(s)), %d group(s), cache %s",
            len(catalogue),
            len(catalogue.upstream()),
            len(providers),
            len(catalogue.groups),
            runtime.cache.backend if runtime.cache is not None else "off",
        )
        return runtime

    async def probe_once(self) -> None:
        """GET /models on every probed provider; each of its targets learns the result."""
        by_provider: dict[str, list[Target]] = {}
        for target in self.router.catalogue.upstream():
            by_provider.setdefault(target.provider, []).append(target)

        async def probe(name: str, client: OpenAICompatProvider) -> None:
            error: str | None = None
            try:
                await client.probe()
            except UpstreamError as exc:
                error = exc.message
            for target in by_provider.get(name, ()):
                self.router.health.probed(target, error is None, error)

        await asyncio.gather(*(probe(n, c) for n, c in self.providers.items() if c.config.probe))

    async def _probe_loop(self) -> None:
        interval = self.router.config.probe_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.probe_once()
            except Exception:  # never let the loop die
                log.exception("health probe round failed")

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        if self.alerts is not None:
            await self.alerts.stop()
        for client in self.providers.values():
            await client.stop()
        if self.cache is not None:
            await self.cache.close()


def preflight(settings: Settings) -> None:
    """Check what the router needs before the server binds: every provider's key is there,
    groups and fallbacks name known models, strategies exist with valid options.

    Raises :class:`ConfigurationError` saying what to fix."""
    for provider in settings.providers:
        if provider.enabled:
            try:
                provider.api_key()
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from exc
    catalogue = _catalogue(settings, [local_target(m) for m in settings.models])
    for name, group in catalogue.groups.items():
        try:
            make_strategy(group.strategy, group.options)
        except ValueError as exc:
            raise ConfigurationError(f"router group {name!r}: {exc}") from exc
    try:
        make_strategy(settings.router.default_strategy, {})
    except ValueError as exc:
        raise ConfigurationError(f"router.default_strategy: {exc}") from exc


def _with_context(target: Target, context_window: int | None) -> Target:
    """A local target with the engine's real context window, unless one was configured."""
    if target.context_window is not None or context_window is None:
        return target
    return replace(target, context_window=context_window)


def _catalogue(settings: Settings, local: list[Target], extra: Sequence[Target] = ()) -> Catalogue:
    try:
        return Catalogue.from_settings(settings, local=local, extra=extra)
    except ValueError as exc:
        raise ConfigurationError(f"router configuration: {exc}") from exc


async def _with_database(
    settings: Settings, database: Database, catalogue: Catalogue, providers: set[str]
) -> Catalogue:
    """Sync the configured catalogue to its tables; add the targets only the database has."""
    repository = CatalogueRepository(database)
    try:
        await repository.sync(settings.providers, catalogue)
        extra = [
            t
            for t in await repository.extra_targets(set(catalogue.targets))
            if t.provider in providers
        ]
    except Exception as exc:  # the configured catalogue still works
        log.warning("could not sync the model catalogue with the database: %s", exc)
        return catalogue
    if not extra:
        return catalogue
    log.info("serving %d model(s) added in the database", len(extra))
    local = [t for t in catalogue if t.local]
    return _catalogue(settings, local, extra)
