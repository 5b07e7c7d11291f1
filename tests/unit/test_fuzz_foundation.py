"""Random and mutated bytes never raise anything but the typed remote error."""

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.announce import AnnouncementVerifier
from meshd.core.cert import decode_certificate, decode_revocation
from meshd.core.errors import RemoteProtocolError
from tests.unit.helpers import NOW, TRUST, announcement

SAMPLE = announcement(1).raw


def _decoders() -> list[object]:
    verifier = AnnouncementVerifier(TRUST)
    return [decode_certificate, decode_revocation, lambda d: verifier.verify(d, NOW)]


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_remote_errors(data: bytes) -> None:
    for decode in _decoders():
        with contextlib.suppress(RemoteProtocolError):
            decode(data)  # type: ignore[operator]


@settings(max_examples=500)
@given(st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255)), min_size=1,
                max_size=8))  # fmt: skip
def test_mutated_announcements_are_refused_or_unchanged(edits: list[tuple[int, int]]) -> None:
    data = bytearray(SAMPLE)
    for pos, value in edits:
        data[pos] = value
    verifier = AnnouncementVerifier(TRUST)
    try:
        ann = verifier.verify(bytes(data), NOW)
    except RemoteProtocolError:
        return
    # Any mutation that still verifies must be a no-op mutation (canonical encoding + signature).
    assert bytes(data) == SAMPLE
    assert ann.raw == SAMPLE
