"""A sequence read by streaming: what `RolloutResult.rows` and a rollout's remaining episodes
are, so that a million of them never sit in the driver's memory at once."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TypeVar, overload

T = TypeVar("T")


class Streamed(Sequence[T]):
    """A `Sequence` whose subclass gives `__iter__` (a fresh pass over the items each time) and
    `__len__`: indexing walks up to the item asked for, a slice reads them all into a list."""

    def __iter__(self) -> Iterator[T]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return list(self)[index]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        return next(itertools.islice(self, index, None))
