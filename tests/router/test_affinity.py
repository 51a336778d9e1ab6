"""Session and prefix affinity: keys, TTL expiry and the LRU bound, on a hand-moved clock."""

from __future__ import annotations

from helixflow.router.affinity import AffinityMap, prefix_key, session_key
from tests.router.factories import Clock


def test_a_key_maps_to_the_last_target_put() -> None:
    m = AffinityMap(ttl_s=60.0, max_entries=10, clock=Clock())
    assert m.get("s:a") is None
    m.put("s:a", "acme/m")
    assert m.get("s:a") == "acme/m"
    m.put("s:a", "backup/m")
    assert m.get("s:a") == "backup/m"
    assert len(m) == 1


def test_an_entry_expires_after_ttl() -> None:
    clock = Clock()
    m = AffinityMap(ttl_s=60.0, max_entries=10, clock=clock)
    m.put("s:a", "acme/m")
    clock.advance(60.0)
    assert m.get("s:a") == "acme/m"  # at exactly ttl_s it still holds
    clock.advance(0.5)
    assert m.get("s:a") is None
    assert len(m) == 0  # an expired entry is dropped when looked up


def test_putting_again_renews_the_ttl() -> None:
    clock = Clock()
    m = AffinityMap(ttl_s=60.0, max_entries=10, clock=clock)
    m.put("s:a", "acme/m")
    clock.advance(50.0)
    m.put("s:a", "acme/m")
    clock.advance(50.0)
    assert m.get("s:a") == "acme/m"


def test_the_least_recently_put_entry_goes_first_at_the_bound() -> None:
    m = AffinityMap(ttl_s=60.0, max_entries=3, clock=Clock())
    for key in ("a", "b", "c"):
        m.put(key, f"t/{key}")
    m.put("a", "t/a2")  # a is now the most recent
    m.put("d", "t/d")  # b, the oldest, is evicted
    assert len(m) == 3
    assert m.get("b") is None
    assert [m.get(k) for k in ("a", "c", "d")] == ["t/a2", "t/c", "t/d"]
    m.put("e", "t/e")
    assert m.get("c") is None
    assert len(m) == 3


def test_max_entries_zero_keeps_nothing() -> None:
    m = AffinityMap(ttl_s=60.0, max_entries=0, clock=Clock())
    m.put("s:a", "acme/m")
    assert len(m) == 0
    assert m.get("s:a") is None


def test_keys_are_stable_short_digests() -> None:
    assert session_key("alice") == session_key("alice")
    assert session_key("alice") != session_key("bob")
    assert session_key("alice").startswith("s:")
    assert "alice" not in session_key("alice")
    key = prefix_key("You are a helpful assistant." + "x" * 100, 16)
    assert key.startswith("p:")
    # only the first `chars` characters count
    assert key == prefix_key("You are a helpful assistant." + "y" * 100, 16)
    assert key != prefix_key("You are a pirate.", 16)
    assert prefix_key("same", 16) != session_key("same")
