"""EndpointResolver policy with a fake lookup (no DNS)."""

from __future__ import annotations

from meshd.adapters.resolver import EndpointResolver, handshake_stale


class FakeDns:
    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}

    async def resolve(self, name: str) -> list[str]:
        if name not in self.records:
            raise OSError("Name or service not known")
        return self.records[name]


async def test_change_failure_and_round_robin() -> None:
    dns = FakeDns()
    changes: list[tuple[str, int, tuple[str, int]]] = []
    r = EndpointResolver(lambda n, p, e: changes.append((n, p, e)), dns.resolve, min_interval=0)
    r.watch("b.test", 1)
    dns.records["b.test"] = ["192.0.2.1"]
    assert await r.refresh("b.test", 1) == ("192.0.2.1", 1)
    # Round-robin answer still containing the current address: no change, no flap.
    dns.records["b.test"] = ["192.0.2.9", "192.0.2.1"]
    await r.refresh("b.test", 1)
    # Lookup fails: last good address kept, failure reported.
    del dns.records["b.test"]
    assert await r.refresh("b.test", 1) == ("192.0.2.1", 1)
    assert r.errors == {"b.test": "resolving b.test: Name or service not known"}
    # Record moves: applied at once, error cleared.
    dns.records["b.test"] = ["2001:db8::5"]
    assert await r.refresh("b.test", 1) == ("2001:db8::5", 1)
    assert r.errors == {}
    assert changes == [("b.test", 1, ("192.0.2.1", 1)), ("b.test", 1, ("2001:db8::5", 1))]


async def test_on_demand_refreshes_are_rate_limited() -> None:
    dns = FakeDns()
    dns.records["b.test"] = ["192.0.2.1"]
    calls = []

    async def counting(name: str) -> list[str]:
        calls.append(name)
        return await dns.resolve(name)

    r = EndpointResolver(lambda *_: None, counting, min_interval=60)
    r.watch("b.test", 1)
    await r.refresh("b.test", 1)
    await r.refresh("b.test", 1)
    await r.refresh("b.test", 1, force=True)
    assert calls == ["b.test", "b.test"]


def test_handshake_staleness() -> None:
    assert handshake_stale(None, 1000.0)
    assert not handshake_stale(1000.0, 1000.0 + 195.0)
    assert handshake_stale(1000.0, 1000.0 + 196.0)
