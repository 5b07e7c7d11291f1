"""Strict, canonical msgpack.

Everything meshd signs is the msgpack encoding of a positional array (no maps, so no key-order
ambiguity). Decoding is strict: size limits on every container, no extension types, and the
decoded value must re-encode to exactly the input bytes. The last rule makes the encoding
canonical, so that "the bytes that were signed" and "the value we act on" cannot differ.
"""

from __future__ import annotations

from typing import Any

import msgpack

from meshd.core.errors import Reject, RemoteProtocolError

MAX_ARRAY = 256
MAX_BIN = 8192
MAX_STR = 1024


def pack(value: Any) -> bytes:
    """Canonical encoding of a value made of ints, str, bytes, bool, None and tuples/lists."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


class _TooManyArrays(Exception):
    pass


def _array_counter(limit: int) -> Any:
    """A msgpack `list_hook` that stops decoding at the (limit+1)-th array. The unpacker calls
    it as each array is complete, innermost first, so at most `limit` arrays (each at most
    `max_array` elements) are ever built: the cost of decoding is bounded by the count of
    objects, not only by the size of the input (issue #22: one 16 MiB stream message of small
    nested arrays stalled the loop for seconds)."""
    count = 0

    def hook(value: Any) -> Any:
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyArrays
        return value

    return hook


def unpack(
    data: bytes,
    what: str,
    max_size: int,
    *,
    max_array: int = MAX_ARRAY,
    max_bin: int = MAX_BIN,
    max_arrays: int | None = None,
) -> Any:
    """Decode canonical msgpack or raise `RemoteProtocolError`.

    Arrays come back as tuples (hashable, immutable). `what` names the object for the message.
    `max_array`/`max_bin` may be raised for bulk messages that travel on a stream (push-pull);
    `max_arrays` bounds how many arrays the value may hold in all (nesting included), so that
    with `max_array` it bounds the objects decoded.
    """
    if len(data) > max_size:
        raise RemoteProtocolError(Reject.OVERSIZE, f"{what} is {len(data)} bytes, limit {max_size}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_bin_len=max_bin,
            max_str_len=MAX_STR,
            max_array_len=max_array,
            max_map_len=0,
            max_ext_len=0,
            list_hook=None if max_arrays is None else _array_counter(max_arrays),
        )
    except _TooManyArrays:
        raise RemoteProtocolError(
            Reject.MALFORMED, f"{what}: more than {max_arrays} arrays"
        ) from None
    except Exception as exc:  # msgpack raises many unrelated types for junk input
        raise RemoteProtocolError(Reject.MALFORMED, f"{what}: undecodable: {exc}") from None
    try:
        canonical = pack(value) == data
    except Exception:
        canonical = False
    if not canonical:
        raise RemoteProtocolError(Reject.MALFORMED, f"{what}: not canonically encoded")
    return value


def expect_tuple(value: Any, what: str, length: int | None = None) -> tuple[Any, ...]:
    if not isinstance(value, tuple):
        raise RemoteProtocolError(Reject.MALFORMED, f"{what}: expected an array")
    if length is not None and len(value) != length:
        raise RemoteProtocolError(
            Reject.MALFORMED, f"{what}: expected {length} fields, got {len(value)}"
        )
    return value


def expect_int(value: Any, what: str, lo: int = 0, hi: int = 2**64 - 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise RemoteProtocolError(Reject.MALFORMED, f"{what}: expected an integer in [{lo}, {hi}]")
    return value


def expect_bytes(value: Any, what: str, length: int | None = None, max_len: int = MAX_BIN) -> bytes:
    if not isinstance(value, bytes):
        raise RemoteProtocolError(Reject.MALFORMED, f"{what}: expected bytes")
    if length is not None and len(value) != length:
        raise RemoteProtocolError(Reject.MALFORMED, f"{what}: expected {length} bytes")
    if len(value) > max_len:
        raise RemoteProtocolError(Reject.MALFORMED, f"{what}: longer than {max_len} bytes")
    return value


def expect_str(value: Any, what: str, max_len: int = 255) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise RemoteProtocolError(Reject.MALFORMED, f"{what}: expected text of at most {max_len}")
    return value


def expect_str_tuple(value: Any, what: str, max_items: int = 64) -> tuple[str, ...]:
    items = expect_tuple(value, what)
    if len(items) > max_items:
        raise RemoteProtocolError(Reject.MALFORMED, f"{what}: more than {max_items} items")
    return tuple(expect_str(v, what) for v in items)
