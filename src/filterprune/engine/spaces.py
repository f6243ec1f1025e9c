"""Channel spaces in a union-find: the state the dependency builder
(``filterprune.engine.dependencies``) joins, blocks and splits as it walks a traced model.

A *space* is the set of channels one layer (or operation) creates; spaces whose channels must be
pruned at the same indices are joined, and each root space becomes one ``ChannelGroup``. A layout
segment is a tuple (space, channels, features per channel, first channel of the space).
"""

from __future__ import annotations

import itertools
import math


class ChannelSpaces:
    """Union-find over channel spaces, with what is known of each root: its members, why it is
    blocked or approximate, what coupled it, its equal runs (``chunks``) and unequal runs."""

    def __init__(self) -> None:
        self.approx: list[str | None] = []  # why pruning a space is approximate
        self.parent: list[int] = []
        self.members: list[list[str]] = []
        self.blocked: list[str | None] = []
        self.coupling: list[str | None] = []
        self.chunks: list[int] = []
        self.widths: list[int] = []  # channels of each space
        self.runs: list[tuple[int, ...]] = []  # unequal parts a split cuts a space into

    def new_space(self, width: int, member: str | None = None, blocked: str | None = None) -> int:
        self.widths.append(width)
        self.runs.append(())
        self.approx.append(None)
        self.parent.append(len(self.parent))
        self.members.append([member] if member else [])
        self.blocked.append(blocked)
        self.coupling.append(None)
        self.chunks.append(1)
        return len(self.parent) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def join(self, a: tuple, b: tuple, reason: str) -> None:
        """Joins two layouts segment by segment, or one segment with k copies of one space
        (its channels repeat the space's: tiles); blocks both if they do not line up."""
        if [s[1:] for s in a] != [s[1:] for s in b]:
            copies = self.copies(a, b) or self.copies(b, a)
            if copies is None:
                self.block(a + b, f"{reason}, with channels of another layout")
                return
            a, b = copies
        if any(s != t and not (self.whole(s) and self.whole(t)) for s, t in zip(a, b, strict=True)):
            self.block(a + b, f"{reason}, with a part of a split")
            return
        for (x, *_), (y, *_) in zip(a, b, strict=True):
            x, y = self.find(x), self.find(y)
            if x != y:
                self.runs[min(x, y)] = refined(self.runs[x], self.runs[y])
                self.approx[min(x, y)] = self.approx[x] or self.approx[y]
                self.coupling[x] = self.coupling[x] or reason
                self.coupling[y] = self.coupling[y] or reason
                self.chunks[min(x, y)] = math.lcm(self.chunks[x], self.chunks[y])
                self.parent[max(x, y)] = min(x, y)

    def copies(self, one: tuple, many: tuple) -> tuple[tuple, tuple] | None:
        """``(one, many[:1])`` if ``one`` is a single segment and ``many`` k copies of one
        space's segment, k * its channels in all (the tiles of ``ChannelGroup``), else None."""
        if len(one) != 1 or len(many) < 2 or len({(self.find(s), *r) for s, *r in many}) > 1 \
                or not self.whole(one[0]) or not self.whole(many[0]):
            return None
        (_, channels, f, _), (_, part, g, _) = one[0], many[0]
        return (one, many[:1]) if f == g and channels == part * len(many) else None

    def whole(self, segment: tuple) -> bool:
        """Whether a layout segment covers all the channels of its space."""
        space, channels, _, start = segment
        return start == 0 and channels == self.widths[space]

    def approximate(self, layout: tuple, reason: str) -> None:
        for space, *_ in layout:
            root = self.find(space)
            self.approx[root] = self.approx[root] or reason

    def block(self, layout: tuple, reason: str) -> None:
        for space, *_ in layout:
            root = self.find(space)
            self.blocked[root] = self.blocked[root] or reason

    def split(self, space: int, chunks: int) -> None:
        """Requires equal kept counts in each of ``chunks`` equal runs of a space's channels."""
        root = self.find(space)
        self.chunks[root] = math.lcm(self.chunks[root], chunks)


def refined(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The runs cut at the cuts of both ``a`` and ``b`` (runs of the same channels; either may
    be empty: no cut)."""
    ends = sorted({*itertools.accumulate(a), *itertools.accumulate(b)})
    return tuple(end - start for start, end in zip([0, *ends], ends, strict=False))
