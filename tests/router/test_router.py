"""Router.plan: resolution, filtering, ranking, binding (affinity, agents), fallbacks and
feedback, over a hand-built catalogue and health board."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from helixflow.errors import InvalidRequestError, ModelNotFoundError, NoTargetAvailableError
from helixflow.router.catalogue import Catalogue, Target
from helixflow.router.health import HealthBoard
from helixflow.router.router import RequestNeeds, RoutePlan, Router
from helixflow.router.signals import CircuitState, Outcome
from helixflow.router.strategies import AdaptiveStrategy
from helixflow.routing_config import GroupConfig, RetryConfig, RouterConfig
from tests.router import factories
from tests.router.factories import Clock, StrategyFactory

CHAT = RequestNeeds(capabilities=frozenset({"chat"}))
GENERATION = frozenset({"chat", "completions", "tools", "json"})


def target(
    target_id: str,
    *,
    capabilities: Iterable[str] = GENERATION,
    price: float = 0.0,
    **fields: Any,
) -> Target:
    """``price``: per million input and output tokens alike."""
    return factories.target(
        target_id,
        capabilities=capabilities,
        input_price_per_mtok=price,
        output_price_per_mtok=price,
        **fields,
    )


@dataclass
class Setup:
    router: Router
    health: HealthBoard
    catalogue: Catalogue
    factory: StrategyFactory

    def plan(self, requested: str, needs: RequestNeeds = CHAT) -> RoutePlan:
        return self.router.plan(requested, needs)

    def order(self, requested: str, needs: RequestNeeds = CHAT) -> list[str]:
        return [t.id for t in self.plan(requested, needs).order]

    def force(self, target_id: str, state: CircuitState) -> None:
        self.health.force(self.catalogue.targets[target_id], state)


def setup(
    targets: list[Target],
    groups: Iterable[dict[str, Any]] = (),
    *,
    max_fallbacks: int = 3,
    default_strategy: str = "weighted",
) -> Setup:
    config = RouterConfig(
        groups=[GroupConfig.model_validate(g) for g in groups],
        default_strategy=default_strategy,
        retry=RetryConfig(max_fallbacks=max_fallbacks),
    )
    catalogue = Catalogue(targets, config.groups, default_strategy=default_strategy)
    health = HealthBoard(catalogue, config.breaker, clock=Clock())
    factory = StrategyFactory(seed=1)
    router = Router(catalogue, health, config, strategy_factory=factory)
    return Setup(router, health, catalogue, factory)


# Cheapest first: a < b < c < d.
FLEET = [
    target("acme/a", price=1.0, quality={"general": 0.6, "code": 0.9}),
    target("acme/b", price=2.0, quality={"general": 0.9, "code": 0.2}),
    target("backup/c", price=3.0),
    target("backup/d", price=4.0),
]


def entry(plan: RoutePlan, target_id: str) -> dict[str, Any]:
    (found,) = [c for c in plan.candidates if c["target"] == target_id]
    return found


# --- direct requests -------------------------------------------------------------------------


def test_a_direct_target_is_planned_alone() -> None:
    s = setup(FLEET)
    plan = s.plan("acme/b")
    assert [t.id for t in plan.order] == ["acme/b"]
    assert plan.first.id == "acme/b"
    assert plan.strategy == "direct"
    assert plan.reason == "requested"
    assert plan.requested == "acme/b"
    assert plan.candidates == [{"target": "acme/b", "score": 1.0, "note": "only candidate"}]
    assert plan.affinity_keys == []
    assert plan.decision_ms >= 0.0


def test_an_unknown_model_is_not_found() -> None:
    with pytest.raises(ModelNotFoundError):
        setup(FLEET).plan("nope")


def test_a_model_served_by_two_providers_is_chosen_with_the_default_strategy() -> None:
    s = setup(
        [target("acme/m", price=5.0), target("backup/m", price=1.0)],
        default_strategy="cost",
    )
    plan = s.plan("m")
    assert [t.id for t in plan.order] == ["backup/m", "acme/m"]
    assert plan.strategy == "cost"
    assert plan.reason.startswith("cost: ")
    assert plan.strategy_key == "model:m"


# --- groups and strategies -------------------------------------------------------------------


def test_a_group_is_ordered_by_its_strategy_and_every_candidate_is_recorded() -> None:
    s = setup(FLEET, [{"name": "cheap", "targets": ["acme/*", "backup/*"], "strategy": "cost"}])
    needs = RequestNeeds(capabilities=frozenset({"chat"}), prompt_tokens=1000, max_tokens=500)
    plan = s.plan("cheap", needs)
    assert [t.id for t in plan.order] == ["acme/a", "acme/b", "backup/c", "backup/d"]
    assert plan.strategy == "cost"
    assert plan.strategy_key == "group:cheap"
    assert [c["target"] for c in plan.candidates] == ["acme/a", "acme/b", "backup/c", "backup/d"]
    first = entry(plan, "acme/a")
    assert first["score"] == pytest.approx(-0.0015)  # -cost: 1500 tokens at $1 per 1M
    assert first["note"].startswith("cost $0.0015")
    assert plan.reason == f"cost: {first['note']}"
    assert all("score" in c and "note" in c for c in plan.candidates)


def test_the_group_strategy_is_built_once_with_its_options() -> None:
    s = setup(FLEET, [{"name": "q", "strategy": "quality", "options": {"budget_usd": 1.0}}])
    assert len(s.factory.made) == 1
    s.plan("q")
    s.plan("q")
    assert len(s.factory.made) == 1
    assert s.factory.made[0].options == {"budget_usd": 1.0}


def test_a_bad_group_strategy_is_refused_naming_the_group() -> None:
    with pytest.raises(ValueError, match="router group 'g'"):
        setup(FLEET, [{"name": "g", "strategy": "fastest"}])


def test_the_group_category_option_applies_when_the_request_names_none() -> None:
    s = setup(
        FLEET,
        [
            {
                "name": "coders",
                "targets": ["acme/*"],
                "strategy": "quality",
                "options": {"category": "code"},
            }
        ],
    )
    assert s.order("coders") == ["acme/a", "acme/b"]  # code: a 0.9, b 0.2
    general = RequestNeeds(capabilities=frozenset({"chat"}), category="general")
    assert s.order("coders", general) == ["acme/b", "acme/a"]  # general: b 0.9, a 0.6


def test_without_a_category_anywhere_general_is_used() -> None:
    s = setup(FLEET, [{"name": "best", "targets": ["acme/*"], "strategy": "quality"}])
    assert s.order("best") == ["acme/b", "acme/a"]


# --- filters ---------------------------------------------------------------------------------


def test_a_target_lacking_a_capability_is_excluded() -> None:
    s = setup(
        [target("tiny/t", capabilities={"chat"}), *FLEET],
        [{"name": "g", "targets": ["tiny/t", "acme/a"]}],
    )
    plan = s.plan("g", RequestNeeds(capabilities=frozenset({"chat", "tools"})))
    assert [t.id for t in plan.order] == ["acme/a"]
    excluded = entry(plan, "tiny/t")
    assert excluded["excluded"] == "lacks tools"
    assert excluded["missing"] == ["tools"]
    assert "score" not in excluded


def test_a_prompt_over_the_context_window_is_excluded() -> None:
    s = setup(
        [target("small/s", context_window=4096), *FLEET],
        [{"name": "g", "targets": ["small/s", "acme/a"]}],
    )
    needs = RequestNeeds(capabilities=frozenset({"chat"}), prompt_tokens=5000)
    plan = s.plan("g", needs)
    assert [t.id for t in plan.order] == ["acme/a"]
    assert "exceeds its context window of 4096" in entry(plan, "small/s")["excluded"]
    fits = RequestNeeds(capabilities=frozenset({"chat"}), prompt_tokens=4096)
    assert sorted(s.order("g", fits)) == ["acme/a", "small/s"]  # exactly the window fits


def test_an_open_circuit_is_excluded() -> None:
    s = setup(FLEET, [{"name": "g", "targets": ["acme/*"], "strategy": "cost"}])
    s.force("acme/a", "open")
    plan = s.plan("g")
    assert [t.id for t in plan.order] == ["acme/b"]
    assert entry(plan, "acme/a")["excluded"] == "circuit open"


def test_a_half_open_circuit_with_its_trial_taken_is_excluded() -> None:
    s = setup(FLEET, [{"name": "g", "targets": ["acme/*"], "strategy": "cost"}])
    s.force("acme/a", "half_open")
    assert s.order("g") == ["acme/a", "acme/b"]  # the trial slot is free
    assert s.health.begin(s.catalogue.targets["acme/a"])
    plan = s.plan("g")
    assert [t.id for t in plan.order] == ["acme/b"]
    assert entry(plan, "acme/a")["excluded"] == "circuit half_open"


def test_a_direct_local_model_leaves_capability_checks_to_its_engine() -> None:
    local = target("local/tiny", capabilities={"chat", "completions"}, context_window=100)
    s = setup([local, *FLEET])
    needs = RequestNeeds(capabilities=frozenset({"chat", "tools"}), prompt_tokens=500)
    assert s.order("tiny", needs) == ["local/tiny"]
    # but in a group the router checks it like any other
    s = setup([local, *FLEET], [{"name": "g", "targets": ["local/tiny", "acme/a"]}])
    assert s.order("g", needs) == ["acme/a"]


def test_nothing_capable_is_a_400_no_capable_model() -> None:
    s = setup(
        [target("tiny/t", capabilities={"chat"}), target("small/s", context_window=10)],
        [{"name": "g", "targets": ["*"]}],
    )
    needs = RequestNeeds(capabilities=frozenset({"chat", "tools"}), prompt_tokens=50)
    with pytest.raises(InvalidRequestError) as caught:
        s.plan("g", needs)
    error = caught.value
    assert error.status_code == 400
    assert error.code == "no_capable_model"
    assert error.param == "model"
    assert "tiny/t: lacks tools" in error.message
    assert "small/s: prompt of ~50 tokens" in error.message


@pytest.mark.parametrize(
    ("requested", "needs"),
    [
        ("g", frozenset({"embeddings"})),  # embeddings from a chat group
        ("acme/a", frozenset({"embeddings"})),  # from a chat target
        ("local/embed", frozenset({"chat"})),  # chat from an embedding model, named directly
    ],
)
def test_the_wrong_kind_of_model_is_a_400_wrong_model_type(
    requested: str, needs: frozenset[str]
) -> None:
    s = setup(
        [*FLEET, target("local/embed", capabilities={"embeddings"})],
        [{"name": "g", "targets": ["acme/*"]}],
    )
    with pytest.raises(InvalidRequestError) as caught:
        s.plan(requested, RequestNeeds(capabilities=needs))
    assert caught.value.code == "wrong_model_type"
    assert caught.value.status_code == 400


def test_every_circuit_open_is_a_503_no_target_available() -> None:
    s = setup(FLEET, [{"name": "g", "targets": ["acme/*"]}])
    s.force("acme/a", "open")
    s.force("acme/b", "open")
    with pytest.raises(NoTargetAvailableError) as caught:
        s.plan("g")
    error = caught.value
    assert error.status_code == 503
    assert error.code == "no_target_available"
    assert error.headers == {"Retry-After": "1"}
    assert "acme/a: circuit open" in error.message


def test_open_circuits_and_missing_capabilities_together_are_a_503() -> None:
    """Some target could serve the request once healthy: retry, not a client error."""
    s = setup(
        [target("tiny/t", capabilities={"chat"}), *FLEET],
        [{"name": "g", "targets": ["tiny/t", "acme/a"]}],
    )
    s.force("acme/a", "open")
    with pytest.raises(NoTargetAvailableError):
        s.plan("g", RequestNeeds(capabilities=frozenset({"chat", "tools"})))


# --- fallbacks -------------------------------------------------------------------------------


def fallback_fleet() -> list[Target]:
    return [
        target("acme/main", fallbacks=("backup/c", "backup/d", "acme/b", "acme/a")),
        *FLEET,
    ]


def test_fallbacks_follow_the_candidates() -> None:
    s = setup(fallback_fleet())
    plan = s.plan("main")
    assert [t.id for t in plan.order] == ["acme/main", "backup/c", "backup/d", "acme/b"]
    assert plan.reason == "requested"
    assert entry(plan, "backup/c") == {"target": "backup/c", "fallback": True}


@pytest.mark.parametrize("max_fallbacks", [0, 1, 2])
def test_fallbacks_are_capped_by_max_fallbacks(max_fallbacks: int) -> None:
    s = setup(fallback_fleet(), max_fallbacks=max_fallbacks)
    expected = ["acme/main", "backup/c", "backup/d"][: 1 + max_fallbacks]
    assert s.order("main") == expected


def test_the_cap_also_bounds_a_group() -> None:
    s = setup(FLEET, [{"name": "g", "targets": ["*"], "strategy": "cost"}], max_fallbacks=1)
    assert s.order("g") == ["acme/a", "acme/b"]


def test_an_unavailable_fallback_is_skipped() -> None:
    s = setup(fallback_fleet())
    s.force("backup/c", "open")
    plan = s.plan("main")
    assert [t.id for t in plan.order] == ["acme/main", "backup/d", "acme/b", "acme/a"]
    assert entry(plan, "backup/c") == {
        "target": "backup/c",
        "fallback": True,
        "excluded": "circuit open",
    }


def test_only_fallbacks_when_the_requested_target_is_down() -> None:
    s = setup(fallback_fleet())
    s.force("acme/main", "open")
    plan = s.plan("main")
    assert [t.id for t in plan.order] == ["backup/c", "backup/d", "acme/b", "acme/a"]
    assert plan.reason == "fallback: no candidate of the requested model can serve it"


# --- affinity --------------------------------------------------------------------------------


def session(name: str, *, prefix: str | None = None) -> RequestNeeds:
    return RequestNeeds(capabilities=frozenset({"chat"}), session=name, prefix=prefix)


def test_session_affinity_puts_the_served_target_first() -> None:
    s = setup(FLEET, [{"name": "g", "targets": ["*"], "strategy": "cost"}])
    plan = s.plan("g", session("alice"))
    assert plan.first.id == "acme/a"
    assert len(plan.affinity_keys) == 1
    s.router.served(plan, s.catalogue.targets["backup/c"], "req-1")
    again = s.plan("g", session("alice"))
    assert [t.id for t in again.order] == ["backup/c", "acme/a", "acme/b", "backup/d"]
    assert again.reason.startswith("session affinity: backup/c")
    # another session is not bound
    assert s.plan("g", session("bob")).first.id == "acme/a"


def test_session_affinity_gives_way_when_the_target_is_unavailable() -> None:
    s = setup(FLEET, [{"name": "g", "targets": ["*"], "strategy": "cost"}])
    plan = s.plan("g", session("alice"))
    s.router.served(plan, s.catalogue.targets["backup/c"], "req-1")
    s.force("backup/c", "open")
    again = s.plan("g", session("alice"))
    assert again.first.id == "acme/a"
    assert again.reason.startswith("cost: ")


def test_a_direct_request_has_no_affinity() -> None:
    s = setup(FLEET)
    assert s.plan("acme/a", session("alice")).affinity_keys == []


def test_prefix_affinity_only_when_the_group_asks_for_it() -> None:
    prompt = "You are a helpful assistant. " * 10
    s = setup(
        FLEET,
        [
            {"name": "sess", "targets": ["*"], "strategy": "cost"},
            {"name": "pre", "targets": ["*"], "strategy": "cost", "affinity": "prefix"},
            {"name": "none", "targets": ["*"], "strategy": "cost", "affinity": "none"},
        ],
    )
    needs = RequestNeeds(capabilities=frozenset({"chat"}), prefix=prompt)
    for group in ("sess", "pre", "none"):
        plan = s.plan(group, needs)
        s.router.served(plan, s.catalogue.targets["backup/d"], f"req-{group}")
    assert s.order("sess", needs)[0] == "acme/a"  # session affinity ignores the prefix
    assert s.order("none", needs)[0] == "acme/a"
    bound = s.plan("pre", needs)
    assert bound.first.id == "backup/d"
    assert bound.reason.startswith("prefix affinity: backup/d")
    # with affinity none, not even a session binds
    plan = s.plan("none", session("alice"))
    assert plan.affinity_keys == []
    s.router.served(plan, s.catalogue.targets["backup/d"], "req-x")
    assert s.order("none", session("alice"))[0] == "acme/a"


# --- agents ----------------------------------------------------------------------------------


async def test_an_assigned_agent_goes_to_its_target_in_a_group() -> None:
    s = setup(FLEET, [{"name": "g", "targets": ["*"], "strategy": "cost"}])
    await s.router.set_assignments({"writer": "backup/d", "ghost": "nowhere/x"})
    assert s.router.assignments == {"writer": "backup/d"}  # unknown targets are dropped
    needs = RequestNeeds(capabilities=frozenset({"chat"}), agent="writer")
    plan = s.plan("g", needs)
    assert plan.first.id == "backup/d"
    assert plan.reason == "agent writer is assigned to backup/d"
    other = RequestNeeds(capabilities=frozenset({"chat"}), agent="reader")
    assert s.plan("g", other).first.id == "acme/a"


async def test_an_agent_assignment_beats_session_affinity() -> None:
    s = setup(FLEET, [{"name": "g", "targets": ["*"], "strategy": "cost"}])
    plan = s.plan("g", session("alice"))
    s.router.served(plan, s.catalogue.targets["backup/c"], "req-1")
    await s.router.set_assignments({"writer": "backup/d"})
    needs = RequestNeeds(capabilities=frozenset({"chat"}), session="alice", agent="writer")
    assert s.plan("g", needs).first.id == "backup/d"


async def test_an_agent_assignment_only_applies_to_a_group() -> None:
    s = setup(
        [target("acme/m", price=1.0), target("backup/m", price=5.0)],
        [{"name": "g", "targets": ["*"], "strategy": "cost"}],
        default_strategy="cost",
    )
    await s.router.set_assignments({"writer": "backup/m"})
    needs = RequestNeeds(capabilities=frozenset({"chat"}), agent="writer")
    assert s.order("m", needs)[0] == "acme/m"  # a model, not a group: the strategy decides
    assert s.order("g", needs)[0] == "backup/m"


async def test_an_agent_assigned_to_an_unavailable_target_is_routed_normally() -> None:
    s = setup(FLEET, [{"name": "g", "targets": ["*"], "strategy": "cost"}])
    await s.router.set_assignments({"writer": "backup/d"})
    s.force("backup/d", "open")
    needs = RequestNeeds(capabilities=frozenset({"chat"}), agent="writer")
    assert s.plan("g", needs).first.id == "acme/a"


# --- outcomes and feedback -------------------------------------------------------------------


def adaptive_setup() -> tuple[Setup, AdaptiveStrategy]:
    s = setup(FLEET, [{"name": "smart", "targets": ["acme/*"], "strategy": "adaptive"}])
    (strategy,) = s.factory.made
    assert isinstance(strategy, AdaptiveStrategy)
    return s, strategy


def test_feedback_names_the_target_and_reaches_the_strategy() -> None:
    s, strategy = adaptive_setup()
    plan = s.plan("smart")
    served = s.catalogue.targets["acme/b"]
    s.router.served(plan, served, "req-1")
    assert strategy.posterior("acme/b") == (1.0, 1.0)
    assert s.router.feedback("req-1", 0.75) == "acme/b"
    assert strategy.posterior("acme/b") == pytest.approx((1.75, 1.25))
    assert strategy.posterior("acme/a") == (1.0, 1.0)


def test_feedback_for_an_unknown_request_is_none() -> None:
    s, strategy = adaptive_setup()
    assert s.router.feedback("never-seen", 1.0) is None
    assert strategy.posterior("acme/a") == (1.0, 1.0)
    assert strategy.posterior("acme/b") == (1.0, 1.0)


def test_observe_teaches_the_plans_strategy() -> None:
    s, strategy = adaptive_setup()
    plan = s.plan("smart")
    a = s.catalogue.targets["acme/a"]
    s.router.observe(plan, a, Outcome(success=True, latency_ms=10.0))
    s.router.observe(plan, a, Outcome(success=False, latency_ms=10.0))
    assert strategy.posterior("acme/a") == pytest.approx((2.0, 2.0))


def test_latency_per_target_for_assignment() -> None:
    s = setup(FLEET)
    a = s.catalogue.targets["acme/a"]
    s.health.begin(a)
    s.health.end(a, Outcome(success=True, latency_ms=120.0))
    assert s.router.latency_ms() == {"acme/a": 120.0}
