"""What an underlay datagram must pass before the membership core spends a signature check.

Anyone can send to the meshd port on the underlay, and a join request carries an announcement
whose two Ed25519 signatures cost ~160 us to check: ~6,000 requests/s fill a core, and the
starved event loop then answers probes late and raises false suspicions (issue #22, finding 4).
So, in this order, each step cheaper than the next:

1. the source's bucket (`SourceRateLimiter`, IPv6 grouped by /64);
2. a global budget of underlay datagrams decoded (`UNDERLAY_RATE`), so that a flood from
   rotating sources costs little more than reading it;
3. the message's structure (`meshd.core.wire.decode`): only join requests are gated further.
   A join reply is believed only for a pending request of ours, which the core checks before
   it verifies anything; overlay and stream traffic come through the tunnel;
4. the announcement's cheap checks: size, structure, mesh, CA, validity window, revocation, and
   the cache of announcements and certificates whose signatures failed before
   (`AnnouncementVerifier.needs_signature_check`);
5. the global budget of signature checks, shared by all sources (`TokenBucket`): only an
   announcement that is not already known good spends a token.

The core checks everything again (cheaply: it hits the same verifier's caches) and keeps its
own order; this gate only drops, it never changes state. Pure: time comes in as arguments.
"""

from __future__ import annotations

from meshd.core import wire
from meshd.core.announce import AnnouncementVerifier
from meshd.core.errors import Reject, RemoteProtocolError
from meshd.core.ratelimit import SourceRateLimiter, TokenBucket

VERIFY_RATE = 500.0
"""Join announcements with a signature check per second, for all sources together: ~80 ms of
one core per second (two verifications of ~80 us each), so a flood leaves the loop most of
its time. 500/s still lets a mesh of 1,000 nodes that restarted at once all join one seed
within a few seconds (the core's join retries cover the rest)."""
VERIFY_BURST = 500.0
"""Signature checks that may be spent at once after a quiet time."""
UNDERLAY_RATE = 2000.0
"""Underlay datagrams decoded per second, for all sources together, after the per-source
bucket: a flood from rotating sources (each new source gets a fresh burst) is dropped here,
before its ~30 us of decoding, so the loop keeps reading the socket it shares with the
overlay's probes (`bench attack`: a 20,000/s flood). Legitimate underlay traffic is a join or
mesh check per node now and then; 2,000/s lets a fleet of thousands (re)join at once."""


class JoinGate:
    """The checks of the module docstring; `admit` says whether a datagram goes on."""

    def __init__(
        self,
        verifier: AnnouncementVerifier,
        per_source: SourceRateLimiter | None = None,
        budget: TokenBucket | None = None,
    ) -> None:
        self.verifier = verifier
        self.per_source = per_source or SourceRateLimiter(rate=10.0, burst=20.0)
        self.budget = budget or TokenBucket(VERIFY_RATE, VERIFY_BURST)
        self.underlay = TokenBucket(UNDERLAY_RATE, UNDERLAY_RATE)

    def admit(
        self, data: bytes, source: str, now: float, mono: float
    ) -> RemoteProtocolError | None:
        """None when the underlay datagram `data` from address `source` may go to the core,
        else why not (to count; never raised). `now`: Unix seconds (certificate validity);
        `mono`: a monotonic clock in seconds (buckets)."""
        if not self.per_source.allow(source, mono):
            return RemoteProtocolError(Reject.RATE_LIMITED, f"join traffic from {source}")
        if not self.underlay.take(mono):
            return RemoteProtocolError(Reject.RATE_LIMITED, "global underlay budget spent")
        try:
            msg = wire.decode(data, wire.Channel.UNDERLAY)
            if not isinstance(msg, wire.JoinRequest):
                return None
            if not self.verifier.needs_signature_check(msg.announcement, now):
                return None
        except RemoteProtocolError as exc:
            return exc
        if not self.budget.take(mono):
            return RemoteProtocolError(Reject.RATE_LIMITED, "global signature check budget spent")
        return None
