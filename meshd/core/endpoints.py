"""Which underlay endpoint to configure for a peer.

WireGuard roams: once a handshake succeeds, the peer's endpoint becomes the address its packets
last came from (whitepaper section 2.1), which is how NAT traversal works when the NAT'd side
initiates. So while the handshake is fresh, meshd leaves the endpoint WireGuard learnt alone.
When it goes stale (no handshake for longer than WireGuard's rekey window), meshd walks through
the endpoints the peer announced, one per `retry_after` seconds, until one answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Endpoint = tuple[str, int]

# WireGuard re-handshakes every REKEY_AFTER_TIME (120 s) while traffic flows and keepalives keep
# traffic flowing; REJECT_AFTER_TIME is 180 s. A handshake older than that means the endpoint
# in use no longer works.
STALE_HANDSHAKE_S = 180.0
# A handshake initiation is retried every REKEY_TIMEOUT (5 s); give each endpoint two tries.
RETRY_AFTER_S = 10.0


@dataclass
class EndpointChoice:
    """Per-peer selection state (mutable; owned by the daemon)."""

    announced: tuple[Endpoint, ...] = ()
    index: int = 0
    chosen_at: float = 0.0
    current: Endpoint | None = field(default=None)

    def update(
        self,
        announced: tuple[Endpoint, ...],
        handshake_age: float | None,
        roamed: Endpoint | None,
        now: float,
        stale_after: float = STALE_HANDSHAKE_S,
        retry_after: float = RETRY_AFTER_S,
    ) -> Endpoint | None:
        """The endpoint to configure now. `handshake_age` is None if there never was one;
        `roamed` is the endpoint WireGuard currently reports."""
        if announced != self.announced:
            # New announcement (the peer moved): start over with its best endpoint at once.
            self.announced, self.index, self.chosen_at = announced, 0, now
            self.current = announced[0] if announced else roamed
            return self.current
        if handshake_age is not None and handshake_age < stale_after and roamed is not None:
            self.current = roamed  # working: keep what WireGuard learnt
            self.chosen_at = now
            return self.current
        if self.current is None and announced:
            self.current, self.chosen_at = announced[self.index], now
        elif announced and now - self.chosen_at >= retry_after:
            self.index = (self.index + 1) % len(announced)
            self.current, self.chosen_at = announced[self.index], now
        return self.current
