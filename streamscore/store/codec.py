"""LeadState <-> bytes: a MessagePack map with short keys, defaults left out; reads Lua's too.

The format (key "v" = FORMAT):

    v    format version (always)          id   lead id (always)
    lt   last_ms (the base of the times)  tier tier index
    a    anchor_ms                        ra   points_anchor_ms, when it differs from a
    e    positive (normalised)            pen  negative
    arm  0 when disarmed                  n    output sequence number
    dq   event flag (1 dq, 2 requalify)   dqt  its event time
    fit  fit points                       fdq  1 when an attribute disqualifies
    bant BANT mask                        ver  rules version
    pd   1 when penalties are normalised (decay.penalties)
    r    {rule id: positive points}       np   {rule id: penalties}
    c    {rule id: {window: points used}} P    {attribute: [time, value, fit, mask, dq, reasons]}
    s    seen event ids (below)           hp   home input partition number
    an   1 when anonymous (identity)      idn  [merged into or nil, {linked id: time},
                                               {absorbed id: time}] (scoring/identity.py)
    acc  [account id, 1 when from a group call] (scoring/accounts.py)

Every byte is written on every change of a lead, and a lead is written once per batch it is
in, so the format is compact and cheap to produce:

- Fields at their defaults (0, None, empty, armed) are left out: most leads have no penalties,
  flags, profile or caps.
- Times other than lt (a, ra, dqt, a profile record's and a story item's time) are stored as
  lt minus the time,
  a small integer (lt is the lead's present: no time it holds is later); without lt, the base
  is 0.
- Numbers are integers when integral (|x| < 2^53), else float64, -0.0 as 0: a point total of
  10.0 takes one byte, not nine.
- A profile record whose attribute is worth nothing (fit 0, no BANT bit, no disqualification,
  no reasons) is [time, value]; the others [time, value, fit, mask, dq, reasons].
- Seen event ids are one binary string: the n 64-bit hashes, then their n event times
  (signed), little-endian, in the order the ids were first seen; packed and unpacked in C,
  not as a map of 2n numbers. A busy lead keeps hundreds of them, so the encoder can reuse
  its last string and pack only the ids added since (`SeenMemo`; LeadState.seen only grows in
  place).

Maps are written in a fixed key order, nested ones sorted, so equal states give equal bytes
(and a store can compare bytes to skip unchanged writes); seen ids are the exception: they
keep the order they were seen in, so equal histories give equal bytes.

Unknown keys are kept: decode puts them in LeadState.extra and encode writes them back as they
came, so a state written by a newer streamscore with more fields (outcome snapshots, identity
links...) survives a read-modify-write by this one. A newer *format version* is rejected
loudly instead: a field whose meaning changes needs a new version, not a new key. Format 2
(absolute times, floats, seen ids as a map) is still read.

decode_lead also reads the map apply_batch.lua writes (no "v" key): id, a, e, pen, lt, tier,
arm, n, dq, dqt, fit, fdq, bant, ver, due (dropped: due_ms recomputes it), r:<rule>,
n:<rule>, c:<rule> ({window as %.17g text: used}), P (the profile, itself packed) and the older
p:<attr> fields. Its cap tables are trimmed to the windows the new rule keeps. Seen event ids
lived in a separate sorted set and are not carried over: after the switch, a tracker retry of
an event applied before it is counted again unless it arrives after the dedup window anyway.
"""

from __future__ import annotations

import functools
import struct
import sys
from array import array
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any

import msgpack
import msgspec

from streamscore.errors import StreamscoreError
from streamscore.scoring.accounts import AccountState
from streamscore.scoring.engine import DISQUALIFY, NO_FLAG, REQUALIFY
from streamscore.scoring.identity import Identity
from streamscore.scoring.state import CAP_WINDOWS_KEPT, LeadState, ProfileRecord, StoryRow

#: Version of the format encode_lead writes; decode_lead reads it and the legacy Lua map.
FORMAT = 3
#: Older formats decode_lead still reads (see the module docstring).
_READABLE = frozenset((2, FORMAT))

_KNOWN = frozenset(
    (
        "v", "id", "a", "ra", "e", "pen", "lt", "tier", "arm", "n", "dq", "dqt", "fit", "fdq",
        "bant", "ver", "pd", "r", "np", "c", "P", "s", "hp", "st", "rb", "fu",
        "an", "idn", "acc",
    )
)  # fmt: skip
_LEGACY_CORE = frozenset(
    ("id", "a", "e", "pen", "lt", "tier", "arm", "n", "dq", "dqt", "fit", "fdq", "bant", "ver")
)


class StateCodecError(StreamscoreError):
    """Stored lead state cannot be decoded: malformed, or written in a newer format."""


# ------------------------------------------------------------------ encode

#: Integral numbers in this range are stored as integers: points, penalties and cap use are
#: mostly integral, and a small integer takes 1 to 3 bytes where a float64 takes 9. A lookup in
#: a table is the cheapest test (a float and an int of equal value hash alike); other numbers
#: are floats, so a value is always written the same way.
_INT_OF: dict[float, int] = {float(i): i for i in range(-4096, 4097)}
_int_of = _INT_OF.get
#: msgspec packs and unpacks these maps 2 to 3 times faster than msgpack-python, to the same
#: bytes. Text that is not valid UTF-8 (a lone surrogate: bytes that arrived as invalid UTF-8,
#: kept by surrogateescape) is left to msgpack-python, whose surrogateescape writes and reads it
#: back byte for byte.
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")


def _pack(m: dict[str, Any]) -> bytes:
    try:
        return _encode(m)
    except (msgspec.EncodeError, UnicodeEncodeError):
        packed: bytes = _packer.pack(m)
        return packed


def _unpack(raw: bytes) -> Any:
    try:
        return _decode(raw)
    except msgspec.DecodeError:
        # Not valid UTF-8 text, or not MessagePack at all: msgpack-python says which.
        return msgpack.unpackb(
            raw, raw=False, strict_map_key=False, unicode_errors="surrogateescape"
        )


_LITTLE = sys.byteorder == "little"
#: Compiled formats, by format string (struct's own cache holds 100; busy leads vary more).
_struct = functools.lru_cache(maxsize=1024)(struct.Struct)


def _n(x: float) -> float | int:
    """A number as stored: a small integer when it is one, else a float (-0.0 as 0)."""
    return _int_of(x, x + 0.0)


def _numbers_of(table: dict[str, float]) -> dict[str, float | int]:
    if len(table) == 1:
        for rule, v in table.items():
            return {rule: _int_of(v, v + 0.0)}
    return {rule: _int_of(v, v + 0.0) for rule, v in sorted(table.items())}


class SeenMemo:
    """The last seen-ids string written for one lead, to extend instead of rebuild."""

    __slots__ = ("count", "hashes", "table", "times")

    def __init__(self) -> None:
        self.table: dict[int, int] | None = None
        self.count = 0
        self.hashes = b""
        self.times = b""


def _packed(values: Any, code: str) -> bytes:
    """Little-endian 64-bit integers ("Q" unsigned, "q" signed)."""
    values = tuple(values)
    return _struct(f"<{len(values)}{code}").pack(*values)


def _seen_blob(seen: dict[int, int], memo: SeenMemo | None) -> bytes:
    """The hashes, then their times, in the table's order: 16 bytes an id, built in C."""
    if memo is not None and memo.table is seen and len(seen) >= memo.count:
        # The same table, only grown since (LeadState.seen): pack the new ids alone.
        added = list(islice(seen.items(), memo.count, None))
        if added:
            memo.hashes += _packed([h for h, _ in added], "Q")
            memo.times += _packed([t for _, t in added], "q")
            memo.count = len(seen)
        return memo.hashes + memo.times
    n = len(seen)
    # One struct.pack for both halves: 2.4 times faster than two arrays for a handful of ids.
    blob = _struct(f"<{n}Q{n}q").pack(*seen, *seen.values())
    if memo is not None:
        memo.table, memo.count, memo.hashes, memo.times = seen, n, blob[: 8 * n], blob[8 * n :]
    return blob


def _record_row(rec: ProfileRecord, base: int) -> list[Any]:
    if rec.fit_points or rec.bant_mask or rec.disqualify or rec.reasons:
        return [
            base - rec.time_ms,
            rec.value,
            _n(rec.fit_points),
            rec.bant_mask,
            bool(rec.disqualify),
            [[rule, _int_of(points, points + 0.0)] for rule, points in rec.reasons],
        ]
    return [base - rec.time_ms, rec.value]


def encode_lead(state: LeadState, memo: SeenMemo | None = None) -> bytes:
    """The state as a MessagePack map: short keys, defaults left out, deterministic.

    `memo` (one per lead, kept by the caller) lets a lead's seen ids be extended rather than
    packed afresh on every write.
    """
    m: dict[str, Any] = {"v": FORMAT, "id": state.lead_id}
    last = state.last_ms
    base = 0
    if last is not None:
        m["lt"] = base = last
    anchor = state.anchor_ms
    if anchor is not None:
        m["a"] = base - anchor
    points_anchor = state.points_anchor_ms
    if points_anchor != anchor:
        m["ra"] = None if points_anchor is None else base - points_anchor
    if state.positive:
        m["e"] = _n(state.positive)
    if state.negative:
        m["pen"] = _n(state.negative)
    if state.tier:
        m["tier"] = state.tier
    if not state.armed:
        m["arm"] = 0
    if state.seq:
        m["n"] = state.seq
    if state.flag != NO_FLAG:
        m["dq"] = state.flag
    if state.flag_ms is not None:
        m["dqt"] = base - state.flag_ms
    if state.fit:
        m["fit"] = _n(state.fit)
    if state.fit_disqualify:
        m["fdq"] = 1
    if state.bant:
        m["bant"] = state.bant
    if state.rules_version is not None:
        m["ver"] = state.rules_version
    if state.penalties_decay:
        m["pd"] = 1
    if state.points:
        m["r"] = _numbers_of(state.points)
    if state.penalties:
        m["np"] = _numbers_of(state.penalties)
    if state.caps:
        m["c"] = {
            rule: {window: _int_of(used, used + 0.0) for window, used in sorted(windows.items())}
            for rule, windows in sorted(state.caps.items())
            if windows
        }
    if state.profile:
        m["P"] = {name: _record_row(rec, base) for name, rec in sorted(state.profile.items())}
    if state.seen:
        m["s"] = _seen_blob(state.seen, memo)
    if state.partition is not None:
        m["hp"] = state.partition
    if state.story:
        m["st"] = [(base - t, kind, label, tenths) for t, kind, label, tenths in state.story]
    if state.rearm_below is not None:
        m["rb"] = _n(state.rearm_below)
    if state.funnel:
        m["fu"] = state.funnel
    if state.anonymous:
        m["an"] = 1
    if state.identity:
        ident = state.identity
        m["idn"] = [ident.merged_into, dict(sorted(ident.links.items())),
                    dict(sorted(ident.merged.items()))]  # fmt: skip
    if state.account is not None:
        m["acc"] = [state.account[0], 1 if state.account[1] else 0]
    if state.extra:
        for key, value in sorted(state.extra.items()):
            if key in _KNOWN:
                raise StateCodecError(f"extra field {key!r} of {state.lead_id!r} shadows a field")
            m[key] = _canonical(value)
    # surrogateescape both ways: text that arrived as invalid UTF-8 goes back byte for byte.
    packed: bytes = _pack(m)
    return packed


def _canonical(value: Any) -> Any:
    """An unknown field's value with its maps in a fixed order (by packed key)."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: msgpack.packb(kv[0], use_bin_type=True))
        return {k: _canonical(v) for k, v in items}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        return value + 0.0
    return value


# ------------------------------------------------------------------ decode


def decode_lead(raw: bytes, lead_id_hint: str | None = None) -> LeadState:
    """A state from encode_lead's bytes, or from the map apply_batch.lua wrote.

    `lead_id_hint` names the lead when the bytes do not (the Lua script always stored it).
    """
    try:
        m = _unpack(raw)
    except (ValueError, msgpack.UnpackException) as exc:
        raise StateCodecError(f"lead state is not MessagePack: {exc}") from None
    if not isinstance(m, dict):
        raise StateCodecError(f"lead state is a {type(m).__name__}, not a map")
    try:
        if "v" in m:
            return _decode_current(m, lead_id_hint)
        return _decode_legacy(m, lead_id_hint)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        who = m.get("id", lead_id_hint)
        raise StateCodecError(f"lead state of {who!r} is malformed: {exc}") from None


def _int(value: Any, key: str) -> int:
    if type(value) is int:  # the common case first: decode runs once per lead loaded
        return value
    # Lua numbers are doubles: an integral float is an integer; bool is no number here.
    if type(value) is float and value.is_integer():
        return int(value)
    raise ValueError(f"{key} must be an integer, not {value!r}")


def _opt_int(value: Any, key: str) -> int | None:
    return None if value is None else _int(value, key)


def _float(value: Any, key: str) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise ValueError(f"{key} must be a number, not {value!r}")


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be text, not {value!r}")
    return value


def _flag(value: Any, key: str) -> bool:
    if value not in (0, 1) or isinstance(value, float):
        raise ValueError(f"{key} must be 0 or 1, not {value!r}")
    return bool(value)


def _event_flag(value: Any, key: str) -> int:
    flag = _int(value, key)
    if flag not in (NO_FLAG, DISQUALIFY, REQUALIFY):
        raise ValueError(f"dq must be {NO_FLAG}, {DISQUALIFY} or {REQUALIFY}, not {flag}")
    return flag


def _map(value: Any, key: str) -> dict[Any, Any]:
    # Lua packs an empty table as an array; an empty map of ours is left out, so accept both.
    if isinstance(value, list) and not value:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a map, not {value!r}")
    return value


def _numbers(value: Any, key: str) -> dict[str, float]:
    return {_str(k, key): _float(v, key) for k, v in _map(value, key).items()}


def _record(value: Any, key: str) -> ProfileRecord:
    if not isinstance(value, list) or len(value) != 6:
        raise ValueError(f"{key} must be [time, value, fit, mask, dq, reasons], not {value!r}")
    time_ms, text, fit, mask, dq, reasons = value
    pairs = [] if isinstance(reasons, dict) and not reasons else reasons
    if not isinstance(pairs, list):
        raise ValueError(f"{key} reasons must be a list, not {reasons!r}")
    return ProfileRecord(
        _int(time_ms, key),
        _str(text, key),
        _float(fit, key),
        _int(mask, key),
        bool(dq) if isinstance(dq, bool) else _flag(dq, key),
        tuple((_str(pair[0], key), _float(pair[1], key)) for pair in pairs),
    )


def _profile(value: Any, key: str) -> dict[str, ProfileRecord] | None:
    records = {
        _str(name, key): _record(rec, f"{key}.{name}") for name, rec in _map(value, key).items()
    }
    return records or None


def _lead_id(m: Mapping[str, Any], hint: str | None) -> str:
    if "id" in m:
        return _str(m["id"], "id")
    if hint is None:
        raise ValueError("no lead id stored and no hint given")
    return hint


def _caps(value: Any, key: str) -> dict[str, dict[int, float]] | None:
    caps = {
        _str(rule, key): {_int(w, key): _float(used, key) for w, used in _map(ws, key).items()}
        for rule, ws in _map(value, key).items()
    }
    return {rule: ws for rule, ws in caps.items() if ws} or None


def _seen(value: Any, key: str) -> dict[int, int] | None:
    return {_int(h, key): _int(t, key) for h, t in _map(value, key).items()} or None


def _story(value: Any, key: str) -> list[StoryRow] | None:
    if not isinstance(value, list):
        raise StateCodecError(f"{key}: expected a list, got {type(value).__name__}")
    items = []
    for item in value:
        if not isinstance(item, list) or len(item) != 4:
            raise StateCodecError(f"{key}: expected [time, kind, label, score] items")
        items.append(
            (_int(item[0], key), _int(item[1], key), sys.intern(_str(item[2], key)),
             _int(item[3], key))
        )  # fmt: skip
    return items or None


def _opt_float(value: Any, key: str) -> float | None:
    return None if value is None else _float(value, key)


def _funnel(value: Any, key: str) -> list[Any] | None:
    # Kept in its wire form (outcomes/funnel.py decodes it where it is used): a list.
    if not isinstance(value, list):
        raise StateCodecError(f"{key}: expected a list, got {type(value).__name__}")
    return value or None


def _identity(value: Any, key: str) -> Identity | None:
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError(f"{key} must be [merged into, links, merged], not {value!r}")
    into, links, merged = value
    ident = Identity(
        _opt_str(into, key),
        {_str(k, key): _int(t, key) for k, t in _map(links, key).items()},
        {_str(k, key): _int(t, key) for k, t in _map(merged, key).items()},
    )
    return ident or None


def _opt_str(value: Any, key: str) -> str | None:
    return None if value is None else _str(value, key)


def _opt_numbers(value: Any, key: str) -> dict[str, float] | None:
    return _numbers(value, key) or None


def _account(value: Any, key: str) -> tuple[str, bool] | None:
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
        raise ValueError(f"{key} must be [account id, from group]")
    return value[0], bool(value[1])


#: Stored key -> (LeadState field, reader of the stored value). "v", "id" and "ra" are apart.
_FIELDS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "a": ("anchor_ms", _opt_int),
    "e": ("positive", _float),
    "pen": ("negative", _float),
    "lt": ("last_ms", _opt_int),
    "tier": ("tier", _int),
    "arm": ("armed", _flag),
    "n": ("seq", _int),
    "dq": ("flag", _event_flag),
    "dqt": ("flag_ms", _opt_int),
    "fit": ("fit", _float),
    "fdq": ("fit_disqualify", _flag),
    "bant": ("bant", _int),
    "ver": ("rules_version", _opt_str),
    "pd": ("penalties_decay", _flag),
    "r": ("points", _numbers),
    "np": ("penalties", _opt_numbers),
    "c": ("caps", _caps),
    "P": ("profile", _profile),
    "s": ("seen", _seen),
    "hp": ("partition", _opt_int),
    "st": ("story", _story),
    "rb": ("rearm_below", _opt_float),
    "fu": ("funnel", _funnel),
    "an": ("anonymous", _flag),
    "idn": ("identity", _identity),
    "acc": ("account", _account),
}


def _decode_current(m: dict[str, Any], hint: str | None) -> LeadState:
    version = m["v"]
    if version not in _READABLE:
        raise StateCodecError(
            f"lead state format {version!r} is not {FORMAT}: written by another streamscore "
            "version; refusing to guess what its fields mean"
        )
    if version == FORMAT:
        return _decode_v3(m, hint)
    state = LeadState(_lead_id(m, hint))
    # Only the keys present are read: most leads store a handful.
    extra: dict[str, Any] = {}
    for key, value in m.items():
        spec = _FIELDS.get(key)
        if spec is not None:
            setattr(state, spec[0], spec[1](value, key))
        elif key not in _KNOWN:
            extra[key] = value
    state.points_anchor_ms = _opt_int(m["ra"], "ra") if "ra" in m else state.anchor_ms
    if extra:
        state.extra = extra
    return state


#: Format 3 keys read as they are stored; its times (a, ra, dqt, P) and s are read apart.
_FIELDS_V3 = {k: v for k, v in _FIELDS.items() if k not in ("a", "dqt", "P", "s", "st")}


def _decode_v3(m: dict[str, Any], hint: str | None) -> LeadState:
    state = LeadState(_lead_id(m, hint))
    extra: dict[str, Any] = {}
    for key, value in m.items():
        spec = _FIELDS_V3.get(key)
        if spec is not None:
            setattr(state, spec[0], spec[1](value, key))
        elif key not in _KNOWN:
            extra[key] = value
    base = state.last_ms or 0
    if "a" in m:
        state.anchor_ms = base - _int(m["a"], "a")
    if "ra" in m:
        ra = m["ra"]
        state.points_anchor_ms = None if ra is None else base - _int(ra, "ra")
    else:
        state.points_anchor_ms = state.anchor_ms
    if "dqt" in m:
        state.flag_ms = base - _int(m["dqt"], "dqt")
    if "P" in m:
        state.profile = {
            _str(name, "P"): _record_v3(row, f"P.{name}", base)
            for name, row in _map(m["P"], "P").items()
        } or None
    if "s" in m:
        state.seen = _seen_v3(m["s"])
    if "st" in m:
        story = _story(m["st"], "st")
        state.story = (
            None if story is None else [(base - t, k, label, n) for t, k, label, n in story]
        )
    if extra:
        state.extra = extra
    return state


def _record_v3(row: Any, key: str, base: int) -> ProfileRecord:
    if not isinstance(row, list) or len(row) not in (2, 6):
        raise ValueError(f"{key} must be [time, value] or [time, value, fit, mask, dq, reasons]")
    if len(row) == 2:
        return ProfileRecord(base - _int(row[0], key), _str(row[1], key), 0.0, 0, False, ())
    record = _record(row, key)
    return record._replace(time_ms=base - record.time_ms)


def _seen_v3(blob: Any) -> dict[int, int] | None:
    if not isinstance(blob, bytes) or len(blob) % 16:
        raise ValueError(f"s must be a binary string of 16-byte entries, not {blob!r}")
    half = len(blob) // 2
    hashes, times = array("Q"), array("q")
    hashes.frombytes(blob[:half])
    times.frombytes(blob[half:])
    if not _LITTLE:
        hashes.byteswap()
        times.byteswap()
    return dict(zip(hashes, times, strict=True)) or None


def _decode_legacy(m: dict[str, Any], hint: str | None) -> LeadState:
    points: dict[str, float] = {}
    penalties: dict[str, float] = {}
    caps: dict[str, dict[int, float]] = {}
    profile: dict[str, Any] = {}
    if "P" in m:
        packed = m["P"]
        # Lua strings travel as MessagePack str: undo the surrogateescape of the outer decode.
        blob = packed.encode("utf-8", "surrogateescape") if isinstance(packed, str) else packed
        profile.update(
            _map(
                msgpack.unpackb(
                    blob, raw=False, strict_map_key=False, unicode_errors="surrogateescape"
                ),
                "P",
            )
        )
    for key, value in m.items():
        if key in _LEGACY_CORE or key in ("P", "due"):  # due: due_ms recomputes it
            continue
        kind, name = (key[:2], key[2:]) if isinstance(key, str) else ("", "")
        if kind == "r:":
            points[name] = _float(value, key)
        elif kind == "n:":
            penalties[name] = _float(value, key)
        elif kind == "c:":
            caps[name] = _legacy_windows(value, key)
        elif kind == "p:":
            # Older states: one field per attribute, which lead.lua lets override P's record.
            profile[name] = value
        else:
            raise ValueError(f"unknown field {key!r} in a Lua-format state")
    anchor = _opt_int(m.get("a"), "a")
    records = _profile(profile, "P")
    return LeadState(
        lead_id=_lead_id(m, hint),
        anchor_ms=anchor,
        positive=_float(m.get("e", 0), "e"),
        negative=_float(m.get("pen", 0), "pen"),
        points_anchor_ms=anchor,
        last_ms=_opt_int(m.get("lt"), "lt"),
        tier=_int(m.get("tier", 0), "tier"),
        armed=_flag(m.get("arm", 1), "arm"),
        seq=_int(m.get("n", 0), "n"),
        flag=_event_flag(m.get("dq", NO_FLAG), "dq"),
        flag_ms=_opt_int(m.get("dqt"), "dqt"),
        fit=_float(m.get("fit", 0), "fit"),
        fit_disqualify=_flag(m.get("fdq", 0), "fdq"),
        bant=_int(m.get("bant", 0), "bant"),
        rules_version=None if m.get("ver") is None else _str(m["ver"], "ver"),
        points=points,
        penalties=penalties or None,
        caps={rule: ws for rule, ws in caps.items() if ws} or None,
        profile=records,
    )


def _legacy_windows(value: Any, key: str) -> dict[int, float]:
    """A Lua cap table, keys as %.17g text, cut to the windows the new rule keeps."""
    windows = {
        _int(float(_str(w, key)), key): _float(used, key) for w, used in _map(value, key).items()
    }
    if windows:
        oldest = max(windows) - CAP_WINDOWS_KEPT
        windows = {w: used for w, used in windows.items() if w >= oldest}
    return windows


# ------------------------------------------------------------------ accounts

#: Version of the account format encode_account writes.
ACCOUNT_FORMAT = 1


def encode_account(state: AccountState) -> bytes:
    """An account's state as MessagePack (members and traits in a fixed order)."""
    m: dict[str, Any] = {"v": ACCOUNT_FORMAT, "id": state.account_id}
    if state.members:
        m["m"] = {lead: [_n(e), a] for lead, (e, a) in sorted(state.members.items())}
    if state.traits:
        m["tr"] = {k: [_canonical(v), t] for k, (v, t) in sorted(state.traits.items())}
    if state.last_ms is not None:
        m["lt"] = state.last_ms
    if state.tier:
        m["tier"] = state.tier
    if not state.armed:
        m["arm"] = 0
    if state.seq:
        m["n"] = state.seq
    packed: bytes = msgpack.packb(m, use_bin_type=True, unicode_errors="surrogateescape")
    return packed


def decode_account(raw: bytes) -> AccountState:
    """An account's state from encode_account's bytes."""
    try:
        m = msgpack.unpackb(raw, raw=False, strict_map_key=False, unicode_errors="surrogateescape")
        if not isinstance(m, dict) or m.get("v") != ACCOUNT_FORMAT:
            raise ValueError(f"not an account state of format {ACCOUNT_FORMAT}")
        return AccountState(
            str(m["id"]),
            {str(lead): (float(e), _int(a, "m")) for lead, (e, a) in m.get("m", {}).items()},
            {str(k): (v, _int(t, "tr")) for k, (v, t) in m.get("tr", {}).items()},
            _opt_int(m.get("lt"), "lt"),
            _int(m.get("tier", 0), "tier"),
            bool(m.get("arm", 1)),
            _int(m.get("n", 0), "n"),
        )
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise StateCodecError(f"account state is malformed: {exc}") from None
