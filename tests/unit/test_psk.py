import pytest

from meshd.core.errors import LocalProtocolError
from meshd.core.psk import PskChain, epoch_at

A, B, C = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
ORIGIN = PskChain(86400, 0, bytes(32))


def test_golden_values() -> None:
    # If this changes, every deployed mesh's pairs disagree on their PSK: a breaking change.
    chain = ORIGIN.advance_to(3)
    assert chain.key.hex() == "8dae110d334f46a53814518df1a90772c747338ed34d8a20073d40c8f1ca738d"
    assert chain.pair_psk(A, B).hex() == (
        "de6ff9b892add37c43d634b92df75cdf3713ea1b5dac396eacfba7fe89a84508"
    )
    assert chain.key_id().hex() == "bcc0c47294894e0a"


def test_both_sides_agree_and_pairs_and_epochs_differ() -> None:
    e1, e2 = ORIGIN.advance_to(1), ORIGIN.advance_to(2)
    assert e1.pair_psk(A, B) == e1.pair_psk(B, A)
    psks = {e1.pair_psk(A, B), e1.pair_psk(A, C), e1.pair_psk(B, C), e2.pair_psk(A, B)}
    assert len(psks) == 4


def test_ratchet_is_one_way_and_path_independent() -> None:
    assert ORIGIN.advance_to(5) == ORIGIN.advance_to(2).advance_to(5)
    with pytest.raises(LocalProtocolError, match="cannot be derived"):
        ORIGIN.advance_to(5).advance_to(4)


def test_epoch_from_time() -> None:
    assert epoch_at(86399.9, 86400) == 0
    assert epoch_at(86400.0, 86400) == 1


def test_secret_file_round_trip_and_errors() -> None:
    chain = ORIGIN.advance_to(7)
    assert PskChain.from_text(chain.to_text(), "f") == chain
    assert "key=<secret>" in repr(chain)
    with pytest.raises(LocalProtocolError, match="not a meshd PSK secret"):
        PskChain.from_text("hello", "f")
    with pytest.raises(LocalProtocolError, match="missing field key"):
        PskChain.from_text("meshd-psk-v1\nperiod=86400\nepoch=1\n", "f")
    with pytest.raises(LocalProtocolError, match="at least 60 seconds"):
        PskChain.from_text(chain.to_text().replace("period=86400", "period=5"), "f")
