"""The Schedule value object and its text form (the cache key).

Schedule text: ops in program order, ``tag: actions`` joined by ``; ``, e.g.
``operation_0: NT; operation_1: TP(64,64,0) T(4,16,1) V``.  Each action's text
is its class's (`actions`); parsing and printing round-trip.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Mapping, Tuple

from .actions import NT, Action
from .errors import ScheduleError
from .program import Program

_ACTION_RE = re.compile(r"\s*([A-Z][A-Z0-9]*)\s*(?:\(([^)]*)\))?")


def parse_actions(text: str, where: str = "") -> Tuple[Action, ...]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _ACTION_RE.match(text, pos)
        if not m or m.end() == pos:
            raise ScheduleError(f"{where}cannot read an action at {text[pos:]!r}")
        name, args = m.group(1), m.group(2)
        cls = Action.registry.get(name)
        if cls is None:
            raise ScheduleError(f"{where}unknown action {name!r} (known: {', '.join(Action.registry)})")
        try:
            params = tuple(int(x) for x in args.split(",")) if args and args.strip() else ()
        except ValueError:
            raise ScheduleError(f"{where}{name} parameters must be integers, got ({args})") from None
        out.append(cls.from_params(params))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tuple(out)


@dataclass(frozen=True)
class Schedule:
    """Actions per op tag.  Canonical: an op with no actions (or only NT) is NT; a
    trailing NT after other actions is dropped; ops print in program order."""

    ops: Tuple[Tuple[str, Tuple[Action, ...]], ...]

    def __post_init__(self):
        canon = []
        seen = set()
        for tag, acts in self.ops:
            if tag in seen:
                raise ScheduleError(f"op {tag} appears twice in the schedule")
            seen.add(tag)
            acts = _drop_noops(tuple(acts))
            if acts and isinstance(acts[-1], NT):
                acts = acts[:-1]
            canon.append((tag, acts))
        canon.sort(key=lambda ta: _tag_key(ta[0]))
        object.__setattr__(self, "ops", tuple(canon))

    @classmethod
    def of(cls, mapping: Mapping[str, Iterable[Action]]) -> "Schedule":
        return cls(tuple((t, tuple(a)) for t, a in mapping.items()))

    @classmethod
    def empty(cls, program: Program) -> "Schedule":
        """The untransformed program: every op NT."""
        return cls(tuple((t, ()) for t in program.tags))

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        ops = []
        for part in text.split(";"):
            if not part.strip():
                continue
            if ":" not in part:
                raise ScheduleError(f"expected 'tag: actions', got {part.strip()!r}")
            tag, acts = part.split(":", 1)
            tag = tag.strip()
            if not re.fullmatch(r"[A-Za-z_][\w.]*", tag):
                raise ScheduleError(f"bad op tag {tag!r}")
            ops.append((tag, parse_actions(acts, f"{tag}: ")))
        return cls(tuple(ops))

    def __str__(self) -> str:
        return "; ".join(f"{t}: {' '.join(map(str, a)) if a else 'NT'}" for t, a in self.ops)

    def actions(self, tag: str) -> Tuple[Action, ...]:
        return dict(self.ops).get(tag, ())

    @property
    def is_empty(self) -> bool:
        return all(not a for _, a in self.ops)

    @property
    def parallel(self) -> bool:
        """Whether the schedule makes parallel loops (needs the OpenMP pipeline)."""
        return any(a.parallel for _, acts in self.ops for a in acts)

    def for_program(self, program: Program) -> "Schedule":
        """This schedule with every op of `program` present (missing ops NT)."""
        unknown = [t for t, _ in self.ops if t not in program.tags]
        if unknown:
            raise ScheduleError(f"schedule names {', '.join(unknown)}, not in {program.source} "
                                f"(ops: {', '.join(program.tags)})")
        have = dict(self.ops)
        return Schedule(tuple((t, have.get(t, ())) for t in program.tags))


def _drop_noops(acts: Tuple[Action, ...]) -> Tuple[Action, ...]:
    """Drop no-op actions (all-zero tilings), and an action that only prepared
    such a no-op (an interchange for the tiling that must follow it)."""
    out: List[Action] = []
    for a in acts:
        if a.is_noop():
            if out and out[-1].followers == (a.name,):
                out.pop()
            continue
        out.append(a)
    return tuple(out)


def _tag_key(tag: str):
    m = re.fullmatch(r"(.*?)(\d+)", tag)
    return (m.group(1), int(m.group(2))) if m else (tag, -1)
