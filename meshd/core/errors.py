"""Errors of the core, split as in h11: who is at fault decides what happens next.

* `LocalProtocolError`: our caller misused the API (a bug, or bad operator input such as a
  malformed certificate request). It is raised and should surface.
* `RemoteProtocolError`: a peer (or anyone on the network) sent something we refuse. The
  receive boundary converts it into a counted, logged drop; it never changes state and never
  stops the daemon. `reason` is a stable label used in metrics and tests.
"""

from __future__ import annotations

import enum


class Reject(enum.StrEnum):
    """Why a remote message was refused. Values are metric label values: keep them stable."""

    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    BAD_SIGNATURE = "bad_signature"
    WRONG_MESH = "wrong_mesh"
    UNKNOWN_CA = "unknown_ca"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    CERT_EXPIRED = "cert_expired"
    REVOKED = "revoked"
    NOT_CERTIFIED = "not_certified"
    STALE = "stale"
    CONFLICT = "conflict"
    UNKNOWN_SENDER = "unknown_sender"
    RATE_LIMITED = "rate_limited"
    WRONG_CHANNEL = "wrong_channel"
    UNKNOWN_TYPE = "unknown_type"
    PSK_MISMATCH = "psk_mismatch"
    BAD_ENDPOINT = "bad_endpoint"
    """An announced underlay endpoint no peer may be given (`meshd.core.endpoints`)."""


class MeshError(Exception):
    """Base class of every error meshd raises on purpose."""


class LocalProtocolError(MeshError):
    """The caller did something wrong; raised to the caller."""


class RemoteProtocolError(MeshError):
    """A remote party sent something we refuse; the message is dropped and counted."""

    def __init__(self, reason: Reject, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
