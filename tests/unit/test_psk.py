import pytest

from meshd.core.announce import psk_compatible
from meshd.core.errors import LocalProtocolError
from meshd.core.psk import PskChain, PskSecrets, epoch_at

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
    with pytest.raises(LocalProtocolError, match="at least 10 seconds"):
        PskChain.from_text(chain.to_text().replace("period=86400", "period=5"), "f")


def test_secret_id_is_fixed_at_creation_and_survives_the_ratchet() -> None:
    assert ORIGIN.secret_id == ORIGIN.key_id()
    later = ORIGIN.advance_to(9)
    assert later.secret_id == ORIGIN.secret_id and later.key_id() != ORIGIN.key_id()
    assert PskChain.from_text(later.to_text(), "f").secret_id == ORIGIN.secret_id


OLD = PskChain(100, 0, bytes(32))
NEW = PskChain(100, 0, bytes([9]) * 32, active_from=1000)


def test_secret_file_with_a_pending_secret_switches_at_its_activation() -> None:
    secrets = PskSecrets.from_text(OLD.to_text() + NEW.to_text(), "f")
    assert secrets.ids == (OLD.secret_id, NEW.secret_id)
    assert secrets.active(999.9) == OLD.advance_to(9)
    assert secrets.active(1000.0) == NEW.advance_to(10)
    assert secrets.next_change(950.0) == 1000.0  # activation comes before the epoch end
    assert secrets.next_change(1000.0) == 1100.0
    # Before the switch both are kept (ratcheted); after it the old one is dropped for good.
    assert secrets.ratcheted(999.0).chains == (OLD.advance_to(9), NEW.advance_to(9))
    assert secrets.ratcheted(1000.0).chains == (NEW.advance_to(10),)


def test_a_clock_stepped_back_keeps_the_chain_where_it_is() -> None:
    secrets = PskSecrets((OLD.advance_to(20),))
    assert secrets.active(500.0).epoch == 20


def test_secret_file_errors_name_the_file() -> None:
    with pytest.raises(LocalProtocolError, match="f: not a meshd PSK secret"):
        PskSecrets.from_text("junk\n" + OLD.to_text(), "f")
    with pytest.raises(LocalProtocolError, match="f: a PSK file holds the same secret twice"):
        PskSecrets.from_text(OLD.to_text() * 2, "f")
    with pytest.raises(LocalProtocolError, match="f: a PSK secret id is 8 bytes"):
        PskSecrets.from_text(OLD.to_text().replace(f"id={OLD.secret_id.hex()}", "id=00"), "f")


def test_compatibility_of_announced_secret_ids() -> None:
    a, b = b"a" * 8, b"b" * 8
    assert psk_compatible((), ())
    assert psk_compatible((a, b), (b,))
    assert not psk_compatible((a,), ())
    assert not psk_compatible((), (a,))
    assert not psk_compatible((a,), (b,))


def test_a_moment_clear_of_psk_changes_for_a_key_switch() -> None:
    ten = PskSecrets((PskChain(10, 0, bytes(32)),))  # epoch boundaries at 10, 20, 30, ...
    assert ten.clear_of_changes(14.0, 2.0, 3.0) == 14.0  # 12..17 holds no boundary
    assert ten.clear_of_changes(11.0, 2.0, 3.0) == 12.0  # boundary at 10 was too recent
    assert ten.clear_of_changes(8.0, 2.0, 3.0) == 12.0  # boundary at 10 comes too soon
    assert ten.clear_of_changes(16.9, 2.0, 3.0) == 16.9  # the boundary at 20 is 3.1 s after
    assert ten.clear_of_changes(17.5, 2.0, 3.0) == 22.0
    # A secret's activation counts as a change like an epoch boundary.
    rolled = PskSecrets((*ten.chains, PskChain(10, 0, bytes([1]) * 32, 1000)))
    assert rolled.clear_of_changes(999.0, 2.0, 3.0) == 1002.0
    for at in (0.0, 3.3, 9.9, 10.0, 19.99, 998.5, 1001.7):  # never lands in a guarded window
        t = rolled.clear_of_changes(at, 2.0, 3.0)
        assert t >= at and rolled.next_change(t - 2.0) > t + 3.0
