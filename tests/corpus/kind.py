"""The corpus' table entries: how one kind of bad or odd input is built and what must happen."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Series(StrEnum):
    """Where a series that reached the spool must end."""

    ANALYSED = "analysed"  # job done: results built
    NOT_ELIGIBLE = "not_eligible"  # not_analysed by the assembler's checks, never queued
    NOT_ANALYSED = "not_analysed"  # queued, read by the worker, refused there (HU, decoding)


@dataclass(frozen=True)
class Sample:
    """What a builder made: files sent over one association each batch, or raw TCP chunks."""

    batches: list[list[Path]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [p for batch in self.batches for p in batch]


@dataclass(frozen=True)
class Kind:
    """One kind of input and its asserted outcome.

    Attributes
    ----------
    name:
        Test id.
    build:
        Writes the input into the given (empty) folder.
    refused:
        ``{file index: (status, words in its ErrorComment)}`` for instances the node must refuse
        at receive; every other instance must get Success. Status ``None``: the presentation
        context is rejected, so the instance is never sent.
    series:
        Where the series must end, or None when nothing of it may be stored.
    reason:
        Words the ledger's reason (and the status SR, when one is due) must contain.
    status_sr:
        Whether a "not analysed" status SR must be written (CT image series only).
    answer:
        For raw TCP kinds: the PDU types the node must answer with, in order, repeats counted
        once (empty: not a word).
    closes:
        For raw TCP kinds: whether the node must close the connection itself at once (False: it
        may wait for more bytes, bounded by ``node.network_timeout_s``).
    """

    name: str
    build: Callable[[Path], Sample]
    refused: dict[int, tuple[int | None, str]] = field(default_factory=dict)
    series: Series | None = None
    reason: str = ""
    status_sr: bool = True
    answer: tuple[int, ...] | None = None
    closes: bool = True

    @property
    def raw(self) -> bool:
        return self.answer is not None
