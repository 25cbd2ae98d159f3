"""The results table: one row per measure, with the anchors, Ackgate, the ratio and the issue's target."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness import log


@dataclass
class Row:
    measure: str
    anchors: str
    ackgate: str
    ratio: str
    target: str
    verdict: str


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        row = Row(*cells)
        self.rows.append(row)
        log(f"{row.measure}: {row.ackgate} ({row.verdict})")

    def print(self, out: Any = sys.stdout) -> None:
        headers = ("measure", "anchor(s)", "Ackgate", "ratio", "target", "result")
        cells = [headers, *((r.measure, r.anchors, r.ackgate, r.ratio, r.target, r.verdict) for r in self.rows)]
        widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
        for n, c in enumerate(cells):
            print(" | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip(), file=out)
            if n == 0:
                print("-+-".join("-" * w for w in widths), file=out)


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:,.1f} ms"


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """The median, with min–max when there are several runs."""
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(values))}–{fmt(max(values))})"


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def ratio(mine: Sequence[float], anchor: Sequence[float], unit: str) -> str:
    if not mine or not anchor or statistics.median(anchor) == 0:
        return "—"
    return f"{statistics.median(mine) / statistics.median(anchor):,.2f} {unit}"


def quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
