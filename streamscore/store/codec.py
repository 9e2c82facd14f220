"""LeadState <-> bytes: a MessagePack map with short keys, defaults left out; reads Lua's too.

The format (key "v" = FORMAT):

    v    format version (always)          id   lead id (always)
    a    anchor_ms                        ra   points_anchor_ms, when it differs from a
    e    positive (normalised)            pen  negative
    lt   last_ms                          tier tier index
    arm  0 when disarmed                  n    output sequence number
    dq   event flag (1 dq, 2 requalify)   dqt  its event time
    fit  fit points                       fdq  1 when an attribute disqualifies
    bant BANT mask                        ver  rules version
    pd   1 when penalties are normalised (decay.penalties)
    r    {rule id: positive points}       np   {rule id: penalties}
    c    {rule id: {window: points used}} P    {attribute: [time, value, fit, mask, dq, reasons]}
    s    {event id hash: event time}      hp   home input partition number

Fields at their defaults (0, None, empty, armed) are left out: most leads have no penalties,
flags, profile or caps, and every stored byte is written on every change. Maps are written in a
fixed key order, nested ones sorted, floats as float64 with -0.0 as 0.0, so equal states give
equal bytes (and a store can compare bytes to skip unchanged writes).

Unknown keys are kept: decode puts them in LeadState.extra and encode writes them back as they
came, so a state written by a newer streamscore with more fields (outcome snapshots, identity
links...) survives a read-modify-write by this one. A newer *format version* is rejected
loudly instead: a field whose meaning changes needs a new version, not a new key.

decode_lead also reads the map apply_batch.lua writes (no "v" key): id, a, e, pen, lt, tier,
arm, n, dq, dqt, fit, fdq, bant, ver, due (dropped: due_ms recomputes it), r:<rule>,
n:<rule>, c:<rule> ({window as %.17g text: used}), P (the profile, itself packed) and the older
p:<attr> fields. Its cap tables are trimmed to the windows the new rule keeps. Seen event ids
lived in a separate sorted set and are not carried over: after the switch, a tracker retry of
an event applied before it is counted again unless it arrives after the dedup window anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from streamscore.errors import StreamscoreError
from streamscore.scoring.engine import DISQUALIFY, NO_FLAG, REQUALIFY
from streamscore.scoring.state import CAP_WINDOWS_KEPT, LeadState, ProfileRecord

#: Version of the format encode_lead writes; decode_lead reads it and the legacy Lua map.
FORMAT = 2

_KNOWN = frozenset(
    (
        "v", "id", "a", "ra", "e", "pen", "lt", "tier", "arm", "n", "dq", "dqt", "fit", "fdq",
        "bant", "ver", "pd", "r", "np", "c", "P", "s", "hp", "st", "rb", "fu",
    )
)  # fmt: skip
_LEGACY_CORE = frozenset(
    ("id", "a", "e", "pen", "lt", "tier", "arm", "n", "dq", "dqt", "fit", "fdq", "bant", "ver")
)


class StateCodecError(StreamscoreError):
    """Stored lead state cannot be decoded: malformed, or written in a newer format."""


# ------------------------------------------------------------------ encode


def _f(x: float) -> float:
    # float() for ints that compare equal; + 0.0 turns -0.0 into 0.0: equal states, equal bytes.
    return float(x) + 0.0


def encode_lead(state: LeadState) -> bytes:
    """The state as a MessagePack map: short keys, defaults left out, deterministic."""
    m: dict[str, Any] = {"v": FORMAT, "id": state.lead_id}
    if state.anchor_ms is not None:
        m["a"] = state.anchor_ms
    if state.points_anchor_ms != state.anchor_ms:
        m["ra"] = state.points_anchor_ms
    if state.positive:
        m["e"] = _f(state.positive)
    if state.negative:
        m["pen"] = _f(state.negative)
    if state.last_ms is not None:
        m["lt"] = state.last_ms
    if state.tier:
        m["tier"] = state.tier
    if not state.armed:
        m["arm"] = 0
    if state.seq:
        m["n"] = state.seq
    if state.flag != NO_FLAG:
        m["dq"] = state.flag
    if state.flag_ms is not None:
        m["dqt"] = state.flag_ms
    if state.fit:
        m["fit"] = _f(state.fit)
    if state.fit_disqualify:
        m["fdq"] = 1
    if state.bant:
        m["bant"] = state.bant
    if state.rules_version is not None:
        m["ver"] = state.rules_version
    if state.penalties_decay:
        m["pd"] = 1
    if state.points:
        m["r"] = {rule: _f(v) for rule, v in sorted(state.points.items())}
    if state.penalties:
        m["np"] = {rule: _f(v) for rule, v in sorted(state.penalties.items())}
    if state.caps:
        m["c"] = {
            rule: {window: _f(used) for window, used in sorted(windows.items())}
            for rule, windows in sorted(state.caps.items())
            if windows
        }
    if state.profile:
        m["P"] = {
            name: [
                rec.time_ms,
                rec.value,
                _f(rec.fit_points),
                rec.bant_mask,
                bool(rec.disqualify),
                [[rule, _f(points)] for rule, points in rec.reasons],
            ]
            for name, rec in sorted(state.profile.items())
        }
    if state.seen:
        m["s"] = dict(sorted(state.seen.items()))
    if state.partition is not None:
        m["hp"] = state.partition
    if state.story:
        m["st"] = [list(item) for item in state.story]
    if state.rearm_below is not None:
        m["rb"] = _f(state.rearm_below)
    if state.funnel:
        m["fu"] = state.funnel
    if state.extra:
        for key, value in sorted(state.extra.items()):
            if key in _KNOWN:
                raise StateCodecError(f"extra field {key!r} of {state.lead_id!r} shadows a field")
            m[key] = _canonical(value)
    # surrogateescape both ways: text that arrived as invalid UTF-8 goes back byte for byte.
    packed: bytes = msgpack.packb(m, use_bin_type=True, unicode_errors="surrogateescape")
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
        m = msgpack.unpackb(raw, raw=False, strict_map_key=False, unicode_errors="surrogateescape")
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


def _story(value: Any, key: str) -> list[list[Any]] | None:
    if not isinstance(value, list):
        raise StateCodecError(f"{key}: expected a list, got {type(value).__name__}")
    items = []
    for item in value:
        if not isinstance(item, list) or len(item) != 4:
            raise StateCodecError(f"{key}: expected [time, kind, label, score] items")
        items.append(
            [_int(item[0], key), _int(item[1], key), _str(item[2], key), _int(item[3], key)]
        )
    return items or None


def _opt_float(value: Any, key: str) -> float | None:
    return None if value is None else _float(value, key)


def _funnel(value: Any, key: str) -> list[Any] | None:
    # Kept in its wire form (outcomes/funnel.py decodes it where it is used): a list.
    if not isinstance(value, list):
        raise StateCodecError(f"{key}: expected a list, got {type(value).__name__}")
    return value or None


def _opt_str(value: Any, key: str) -> str | None:
    return None if value is None else _str(value, key)


def _opt_numbers(value: Any, key: str) -> dict[str, float] | None:
    return _numbers(value, key) or None


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
}


def _decode_current(m: dict[str, Any], hint: str | None) -> LeadState:
    version = m["v"]
    if version != FORMAT:
        raise StateCodecError(
            f"lead state format {version!r} is not {FORMAT}: written by another streamscore "
            "version; refusing to guess what its fields mean"
        )
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
