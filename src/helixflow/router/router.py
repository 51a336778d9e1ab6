"""The router: for one request, the ordered targets to try and why.

``plan`` resolves the requested name (target, model or group), drops the candidates that
cannot serve the request (capabilities, context window) or are unavailable (open circuit),
puts first the target the conversation or the agent is bound to, and lets the selection's
strategy rank the rest. The configured fallbacks follow. Executing the plan is ``dispatch``'s
job; every outcome comes back through :meth:`Router.observe`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from helixflow.errors import InvalidRequestError, NoTargetAvailableError
from helixflow.router.affinity import AffinityMap, prefix_key, session_key
from helixflow.router.catalogue import DEFAULT_CATEGORY, Catalogue, Selection, Target
from helixflow.router.health import HealthBoard
from helixflow.router.signals import Outcome, RouteContext, Scored
from helixflow.router.strategies import Strategy, make_strategy
from helixflow.routing_config import RouterConfig

ENDPOINT_CAPABILITIES = frozenset({"chat", "completions", "embeddings"})
"""The capability each endpoint needs; lacking it means the wrong kind of model."""
_RECENT_DECISIONS = 50_000
"""Request ids remembered for feedback."""


@dataclass(frozen=True, slots=True)
class RequestNeeds:
    """What a request requires of a target, and what binds it to one."""

    capabilities: frozenset[str]
    prompt_tokens: int = 0
    """Estimated prompt size."""
    max_tokens: int | None = None
    category: str | None = None
    """Task category for quality scores; None: the group's ``category`` option, else general."""
    session: str | None = None
    prefix: str | None = None
    """The prompt's opening, for prefix affinity."""
    agent: str | None = None


@dataclass(slots=True)
class RoutePlan:
    """The targets to try, in order, and the record of how they were chosen."""

    requested: str
    order: list[Target]
    strategy: str
    reason: str
    candidates: list[dict[str, Any]]
    """Every candidate considered: its score and note, or why it was excluded."""
    strategy_key: str
    decision_ms: float = 0.0
    affinity_keys: list[str] = field(default_factory=list)

    @property
    def first(self) -> Target:
        return self.order[0]


class Router:
    def __init__(
        self,
        catalogue: Catalogue,
        health: HealthBoard,
        config: RouterConfig,
        *,
        strategy_factory: Callable[[str, Mapping[str, object]], Strategy] = make_strategy,
    ) -> None:
        self.catalogue = catalogue
        self.health = health
        self.config = config
        self._strategy_factory = strategy_factory
        self._strategies: dict[str, Strategy] = {}
        for name, group in catalogue.groups.items():
            try:
                self._strategies[f"group:{name}"] = strategy_factory(group.strategy, group.options)
            except ValueError as exc:
                raise ValueError(f"router group {name!r}: {exc}") from exc
        self._affinity = AffinityMap(
            ttl_s=config.affinity_ttl_s, max_entries=config.affinity_max_entries
        )
        self._assignments: dict[str, str] = {}
        self._recent: OrderedDict[str, tuple[str, str]] = OrderedDict()

    # --- agents ----------------------------------------------------------------------------

    async def set_assignments(self, mapping: Mapping[str, str]) -> None:
        """Agent name -> target id, as solved by ``POST /api/v1/router/assign``."""
        self._assignments = {
            agent: target for agent, target in mapping.items() if target in self.catalogue.targets
        }

    @property
    def assignments(self) -> Mapping[str, str]:
        return dict(self._assignments)

    def latency_ms(self) -> dict[str, float]:
        """Smoothed latency per target, for assignment scores."""
        return {
            h.target.id: h.ewma_latency_ms for h in self.health if h.ewma_latency_ms is not None
        }

    # --- planning --------------------------------------------------------------------------

    def _strategy(self, selection: Selection) -> tuple[str, Strategy]:
        key = (
            f"group:{selection.group}"
            if selection.group is not None
            else f"model:{selection.requested}"
        )
        strategy = self._strategies.get(key)
        if strategy is None:
            strategy = self._strategies[key] = self._strategy_factory(
                selection.strategy, selection.options
            )
        return key, strategy

    def plan(self, requested: str, needs: RequestNeeds) -> RoutePlan:
        started = time.perf_counter()
        selection = self.catalogue.resolve(requested)
        considered: list[dict[str, Any]] = []
        eligible = self._eligible(
            selection.candidates, needs, considered, direct=not selection.choosing
        )
        fallbacks = self._eligible(selection.fallbacks, needs, considered, fallback=True)
        if not eligible and not fallbacks:
            self._refuse(requested, considered)
        key, strategy = self._strategy(selection)
        reason = ""
        order: list[Target] = []
        if eligible:
            category = needs.category or selection.options.get("category") or DEFAULT_CATEGORY
            context = RouteContext(
                category=str(category),
                prompt_tokens=needs.prompt_tokens,
                max_tokens=needs.max_tokens,
                options=selection.options,
            )
            if len(eligible) == 1:
                ranked = [Scored(eligible[0], 1.0, "only candidate")]
            else:
                ranked = strategy.rank([self.health.stats(t) for t in eligible], context)
            scores = {s.target.id: s for s in ranked}
            for entry in considered:
                scored = scores.get(entry["target"])
                if scored is not None:
                    entry["score"] = round(scored.score, 6)
                    entry["note"] = scored.note
            order = [s.target for s in ranked]
            reason = (
                f"{selection.strategy}: {ranked[0].note}" if selection.choosing else "requested"
            )
        affinity_keys = self._affinity_keys(selection, needs)
        if selection.choosing and eligible:
            bound = self._bound(selection, needs, affinity_keys, {t.id for t in order})
            if bound is not None:
                target_id, why = bound
                order.sort(key=lambda t: t.id != target_id)
                reason = why
        if not order:
            reason = "fallback: no candidate of the requested model can serve it"
        order.extend(t for t in fallbacks if t not in order)
        limit = 1 + self.config.retry.max_fallbacks
        return RoutePlan(
            requested=requested,
            order=order[:limit],
            strategy=selection.strategy if selection.choosing else "direct",
            reason=reason,
            candidates=considered,
            strategy_key=key,
            decision_ms=(time.perf_counter() - started) * 1000,
            affinity_keys=affinity_keys,
        )

    def _eligible(
        self,
        targets: Sequence[Target],
        needs: RequestNeeds,
        considered: list[dict[str, Any]],
        *,
        fallback: bool = False,
        direct: bool = False,
    ) -> list[Target]:
        """``direct``: the client named this one local model, whose engine checks the
        request itself (with messages naming the field at fault); only the endpoint is
        checked here."""
        out: list[Target] = []
        for target in targets:
            entry: dict[str, Any] = {"target": target.id}
            if fallback:
                entry["fallback"] = True
            lacking = needs.capabilities - target.capabilities
            if direct and target.local:
                lacking &= ENDPOINT_CAPABILITIES
            missing = sorted(lacking)
            if missing:
                entry["excluded"] = f"lacks {', '.join(missing)}"
                entry["missing"] = missing
            elif (
                not (direct and target.local)
                and target.context_window is not None
                and needs.prompt_tokens > target.context_window
            ):
                entry["excluded"] = (
                    f"prompt of ~{needs.prompt_tokens} tokens exceeds its context window of "
                    f"{target.context_window}"
                )
            elif not self.health.available(target):
                entry["excluded"] = f"circuit {self.health.circuit(target.id)}"
            else:
                out.append(target)
            considered.append(entry)
        return out

    @staticmethod
    def _refuse(requested: str, considered: list[dict[str, Any]]) -> None:
        reasons = "; ".join(f"{c['target']}: {c['excluded']}" for c in considered)
        if considered and all(
            set(c.get("missing", ())) & ENDPOINT_CAPABILITIES for c in considered
        ):
            raise InvalidRequestError(
                f"The model '{requested}' does not serve this endpoint ({reasons}): "
                "embedding models serve /v1/embeddings, generation models chat and completions.",
                param="model",
                code="wrong_model_type",
            )
        capability_only = all(c["excluded"].startswith(("lacks", "prompt of")) for c in considered)
        if capability_only:
            raise InvalidRequestError(
                f"No model behind '{requested}' can serve this request ({reasons}).",
                param="model",
                code="no_capable_model",
            )
        raise NoTargetAvailableError(
            f"No target for '{requested}' is available right now ({reasons}); retry shortly.",
            headers={"Retry-After": "1"},
        )

    def _affinity_keys(self, selection: Selection, needs: RequestNeeds) -> list[str]:
        if not selection.choosing or selection.affinity == "none":
            return []
        keys = []
        if needs.session:
            keys.append(session_key(needs.session))
        if needs.prefix and selection.affinity == "prefix":
            keys.append(prefix_key(needs.prefix, self.config.prefix_affinity_chars))
        return keys

    def _bound(
        self, selection: Selection, needs: RequestNeeds, keys: list[str], eligible: set[str]
    ) -> tuple[str, str] | None:
        """The target this request is bound to, if it is eligible, and why."""
        if needs.agent is not None and selection.group is not None:
            assigned = self._assignments.get(needs.agent)
            if assigned in eligible:
                return assigned, f"agent {needs.agent} is assigned to {assigned}"
        for key in keys:
            target = self._affinity.get(key)
            if target in eligible:
                kind = "session" if key.startswith("s:") else "prefix"
                return target, f"{kind} affinity: {target} holds the conversation's KV cache"
        return None

    # --- outcomes --------------------------------------------------------------------------

    def served(self, plan: RoutePlan, target: Target, request_id: str) -> None:
        """``target`` accepted the request: bind the conversation to it, remember the
        decision for feedback."""
        for key in plan.affinity_keys:
            self._affinity.put(key, target.id)
        self._recent[request_id] = (plan.strategy_key, target.id)
        while len(self._recent) > _RECENT_DECISIONS:
            self._recent.popitem(last=False)

    def observe(self, plan: RoutePlan, target: Target, outcome: Outcome) -> None:
        strategy = self._strategies.get(plan.strategy_key)
        if strategy is not None:
            strategy.observe(target.id, outcome)

    def feedback(self, request_id: str, score: float) -> str | None:
        """A caller's rating of a reply; the target that served it, or None if unknown."""
        found = self._recent.get(request_id)
        if found is None:
            return None
        key, target_id = found
        strategy = self._strategies.get(key)
        if strategy is not None:
            strategy.observe(target_id, Outcome(success=True, latency_ms=0.0, feedback=score))
        return target_id
