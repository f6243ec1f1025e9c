"""Channel spaces in a union-find: the state the dependency builder
(``filterprune.engine.dependencies``) joins, blocks and splits as it walks a traced model.

A *space* is the set of channels one layer (or operation) creates. A layout segment is a tuple
(space, channels, features per channel, first channel of the space). Joining two layouts (a
residual addition, a gate) ties their channels one to one: a part of one space to a part of
another (DPN's ``x_s[:, :c] + out[:, :c]``, ReXNet's ``x[:, :in_chs] + shortcut``), a space to
k copies of another (GhostNet), or parts of unequal splits (MixNet). Spaces linked by ties form
one group (one root of the union-find); ``coordinates`` then cuts every space into the runs
(*atoms*) its ties and splits imply and numbers the group's channels, one per tied class of
channels, so that each space covers a sequence of ranges of its group's channels.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

from filterprune.engine.nodes import entries


class ChannelSpaces:
    """Union-find over channel spaces, with what is known of each root (its members, why it is
    blocked or approximate, what coupled it) and of each space (its ties to others, where a
    split cuts it, in how many equal runs grouped convs read or write it)."""

    def __init__(self) -> None:
        self.approx: list[str | None] = []  # why pruning a space is approximate
        self.parent: list[int] = []
        self.members: list[list[str]] = []
        self.blocked: list[str | None] = []
        self.coupling: list[str | None] = []
        self.chunks: list[tuple[int, str]] = []  # equal runs of a space, and who reads them so
        self.widths: list[int] = []  # channels of each space
        self.cuts: list[set[int]] = []  # where unequal splits cut each space
        self.ties: list[tuple[int, int, int, int, int]] = []  # (x, start, y, start, channels)

    def new_space(self, width: int, member: str | None = None, blocked: str | None = None) -> int:
        self.widths.append(width)
        self.cuts.append(set())
        self.approx.append(None)
        self.parent.append(len(self.parent))
        self.members.append([member] if member else [])
        self.blocked.append(blocked)
        self.coupling.append(None)
        self.chunks.append((1, ""))
        return len(self.parent) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def join(self, a: tuple, b: tuple, reason: str) -> None:
        """Ties two layouts of the same entries one to one (the channel of entry i of ``a`` is
        pruned with the channel of entry i of ``b``), whatever parts of spaces their segments
        are and whatever their features per channel; blocks both if their entry counts
        differ."""
        pieces = _aligned(a, b)
        if pieces is None:
            self.block(a + b, f"{reason}, with channels of another layout")
            return
        for x, x_start, y, y_start, channels in pieces:
            if (x, x_start) != (y, y_start):
                self.ties.append((x, x_start, y, y_start, channels))
            x, y = self.find(x), self.find(y)
            if x != y:
                self.approx[min(x, y)] = self.approx[x] or self.approx[y]
                self.coupling[x] = self.coupling[x] or reason
                self.coupling[y] = self.coupling[y] or reason
                self.parent[max(x, y)] = min(x, y)

    def balance(self, parts: list[tuple], reason: str) -> None:
        """Ties channels so that every one of ``parts`` (layouts of equal entry counts: the
        pieces of a ``chunk``) keeps as many entries as the first, whatever is pruned: each
        channel has as many entries more in the first than in another part as a channel tied
        with it has fewer (paired in order), and the channels left unpaired are tied
        together (their differences sum to zero)."""
        for part in parts[1:]:
            surplus: dict[tuple[int, int], int] = {}
            for sign, layout in ((1, parts[0]), (-1, part)):
                for space, channels, f, start in layout:
                    for c in range(start, start + channels):
                        surplus[space, c] = surplus.get((space, c), 0) + sign * f
            more: dict[int, list] = {}
            for channel, d in surplus.items():
                if d > 0:
                    more.setdefault(d, []).append(channel)
            pairs, left = [], []
            for channel, d in surplus.items():
                if d < 0 and more.get(-d):
                    pairs.append((more[-d].pop(0), channel))
                elif d < 0:
                    left.append(channel)
            left += [c for rest in more.values() for c in rest]
            ties: list[list[int]] = []  # [x, start in x, y, start in y, channels]
            for (x, xs), (y, ys) in pairs + [(left[0], c) for c in left[1:]]:
                last = ties[-1] if ties else [None] * 5
                if (last[0], last[2]) == (x, y) and last[1] + last[4] == xs and \
                        last[3] + last[4] == ys:
                    last[4] += 1
                else:
                    ties.append([x, xs, y, ys, 1])
            for x, xs, y, ys, n in ties:
                self.join(((x, n, 1, xs),), ((y, n, 1, ys),), reason)

    def whole(self, segment: tuple) -> bool:
        """Whether a layout segment covers all the channels of its space."""
        space, channels, _, start = segment
        return start == 0 and channels == self.widths[space]

    def whole_group(self, layout: tuple, k: int) -> bool:
        """Whether ``layout`` is all the channels of one space, in a number ``k`` divides."""
        return len(layout) == 1 and self.whole(layout[0]) and layout[0][1] % k == 0

    def approximate(self, layout: tuple, reason: str) -> None:
        for space, *_ in layout:
            root = self.find(space)
            self.approx[root] = self.approx[root] or reason

    def block(self, layout: tuple, reason: str) -> None:
        for space, *_ in layout:
            root = self.find(space)
            self.blocked[root] = self.blocked[root] or reason

    def split(self, space: int, chunks: int, what: str) -> None:
        """Requires equal kept counts in each of ``chunks`` equal runs of a space's channels
        (``what`` reads or writes them so: a grouped conv, a GroupNorm)."""
        known, _ = self.chunks[space]
        self.chunks[space] = (math.lcm(known, chunks), what)

    def cut(self, layout: tuple, position: int) -> bool:
        """Cuts the channels of ``layout`` at entry ``position`` into runs that keep channels
        each on their own (a split or slice whose sizes surgery rewrites: each side keeps
        some); False, cutting nothing, where ``position`` falls inside a channel's features."""
        offset = 0
        for space, channels, f, start in layout:
            if offset <= position <= offset + channels * f:
                if (position - offset) % f:
                    return False
                self.cuts[space].add(start + (position - offset) // f)
            offset += channels * f
        return True

    def coordinates(self) -> tuple[dict[int, int], dict[int, tuple], list[tuple[int, int]]]:
        """The channels of each group and where each space's channels are among them.

        Returns:
            (width, runs, pieces): root -> number of the group's channels; root -> the sizes
            of its runs (neighbouring classes of tied channels made by the same spaces, in the
            same runs of their cuts, form one: a member covering part of the group or a split
            part keeps its own run; empty when there is one run); and per space, its channels
            as a tuple of (first group channel, count) ranges, in the space's channel order.
        """
        bounds = [sorted({0, width, *cuts}) for width, cuts in zip(self.widths, self.cuts,
                                                                      strict=True)]
        for x, xs, y, ys, n in self.ties:
            for space, start in ((x, xs), (y, ys)):
                for p in (start, start + n):
                    _insert(bounds[space], p)
        changed = True
        while changed:  # a cut inside one side of a tie cuts the other side too
            changed = False
            for x, xs, y, ys, n in self.ties:
                for (s, s0), (t, t0) in (((x, xs), (y, ys)), ((y, ys), (x, xs))):
                    lo, hi = bisect.bisect_right(bounds[s], s0), bisect.bisect_left(bounds[s],
                                                                                     s0 + n)
                    for p in bounds[s][lo:hi]:
                        changed |= _insert(bounds[t], t0 + p - s0)
        atom = {(s, p): i for i, (s, p) in enumerate((s, p) for s, b in enumerate(bounds)
                                                     for p in b[:-1])}
        classes = list(range(len(atom)))
        for x, xs, y, ys, n in self.ties:
            for p in bounds[x][bounds[x].index(xs):bounds[x].index(xs + n)]:
                a, b = _find(classes, atom[x, p]), _find(classes, atom[y, ys + p - xs])
                classes[max(a, b)] = min(a, b)
        where: dict[int, set] = {}  # class -> (space, which of its cut runs) of its atoms
        for space, b in enumerate(bounds):
            cuts = sorted(self.cuts[space])
            for p in b[:-1]:
                where.setdefault(_find(classes, atom[space, p]), set()).add(
                    (space, bisect.bisect_right(cuts, p)))
        width: dict[int, int] = {}
        runs: dict[int, list[int]] = {}
        first: dict[int, int] = {}  # class -> its first channel in its group
        last: dict[int, set] = {}  # root -> where its last class is
        pieces = []
        for space, b in enumerate(bounds):
            root, ranges = self.find(space), []
            for lo, hi in zip(b, b[1:], strict=False):
                c = _find(classes, atom[space, lo])
                if c not in first:
                    first[c] = width.get(root, 0)
                    width[root] = first[c] + hi - lo
                    if last.get(root) == where[c]:  # the same spaces and cut runs: one run
                        runs[root][-1] += hi - lo
                    else:
                        runs.setdefault(root, []).append(hi - lo)
                    last[root] = where[c]
                if ranges and ranges[-1][0] + ranges[-1][1] == first[c]:
                    ranges[-1] = (ranges[-1][0], ranges[-1][1] + hi - lo)
                else:
                    ranges.append((first[c], hi - lo))
            pieces.append(tuple(ranges))
        return width, {r: tuple(s) if len(s) > 1 else () for r, s in runs.items()}, pieces


def _aligned(a: tuple, b: tuple) -> list[tuple[int, int, int, int, int]] | None:
    """The one-to-one pieces of two layouts, entry by entry: (x, start in x, y, start in y,
    channels); where their features per channel differ, channel i of one is tied with every
    channel of the other whose entries it shares (a channel of f = k with k channels of f = 1
    after a channel shuffle). None if their entry counts differ."""
    if entries(a) != entries(b):
        return None
    pieces, i, j, di, dj = [], 0, 0, 0, 0  # di, dj: entries of a[i], b[j] already tied
    while i < len(a) and j < len(b):
        (x, nx, fx, sx), (y, ny, fy, sy) = a[i], b[j]
        if fx == fy and di % fx == 0 == dj % fy:
            n = min(nx * fx - di, ny * fy - dj)
            step, channels = n, n // fx
        else:  # up to the next channel boundary of either
            step, channels = min(fx - di % fx, fy - dj % fy), 1
        tie = (x, sx + di // fx, y, sy + dj // fy, channels)
        if not pieces or pieces[-1] != tie:
            pieces.append(tie)
        di, dj = di + step, dj + step
        if di == nx * fx:
            i, di = i + 1, 0
        if dj == ny * fy:
            j, dj = j + 1, 0
    return pieces


def _insert(bounds: list[int], p: int) -> bool:
    """Inserts ``p`` into sorted ``bounds``; whether it was new."""
    k = bisect.bisect_left(bounds, p)
    if k < len(bounds) and bounds[k] == p:
        return False
    bounds.insert(k, p)
    return True


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def ranges_of(pieces: tuple, start: int, channels: int) -> Iterator[tuple[int, int]]:
    """The group channel ranges (first, count) of channels ``start`` to ``start + channels``
    of a space whose channels are ``pieces`` (see ``ChannelSpaces.coordinates``)."""
    offset = 0
    for first, count in pieces:
        lo, hi = max(start, offset), min(start + channels, offset + count)
        if lo < hi:
            yield first + lo - offset, hi - lo
        offset += count
