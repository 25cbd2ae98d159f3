"""Draws the Teams app icons with the standard library only (zlib + struct), so they can be regenerated:

    python manifests/teams/make_icons.py

``color.png``: 192×192, a full-colour tile (Ackgate purple, rounded corners) with a white check mark inside
a gate arch. ``outline.png``: 32×32, the same glyph in white on a fully transparent background, as Teams
asks for outline icons. Both are 8-bit RGBA.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ACCENT = (0x4B, 0x53, 0xBC)
WHITE = (255, 255, 255)


def png(width: int, height: int, pixels: list[list[tuple[int, int, int, int]]]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"".join(bytes(p) for p in row) for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _segment_distance(px: float, py: float, ax: float, ay: float, bx: float, by: float) -> float:
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def glyph_coverage(x: float, y: float) -> float:
    """How much of the unit-square pixel at (x, y) in [0, 1]² the glyph covers (0..1, antialiased)."""
    stroke = 0.075
    segments = [
        # the gate: two posts and an arch approximated by short segments
        (0.22, 0.85, 0.22, 0.42),
        (0.78, 0.85, 0.78, 0.42),
        # the check mark
        (0.34, 0.60, 0.46, 0.72),
        (0.46, 0.72, 0.68, 0.46),
    ]
    arch = [
        (0.5 + 0.28 * math.cos(math.pi * (1 - i / 12)), 0.42 - 0.24 * math.sin(math.pi * (1 - i / 12)))
        for i in range(13)
    ]
    segments += [(*arch[i], *arch[i + 1]) for i in range(12)]
    distance = min(_segment_distance(x, y, *s) for s in segments)
    return max(0.0, min(1.0, (stroke / 2 - distance) * 40 + 0.5))


def color_icon(size: int = 192) -> bytes:
    radius = size * 0.18
    rows = []
    for j in range(size):
        row = []
        for i in range(size):
            cx, cy = min(max(i + 0.5, radius), size - radius), min(max(j + 0.5, radius), size - radius)
            inside = math.hypot(i + 0.5 - cx, j + 0.5 - cy) <= radius
            if not inside:
                row.append((0, 0, 0, 0))
                continue
            c = glyph_coverage((i + 0.5) / size, (j + 0.5) / size)
            rgb = tuple(round(a * (1 - c) + w * c) for a, w in zip(ACCENT, WHITE, strict=True))
            row.append((*rgb, 255))
        rows.append(row)
    return png(size, size, rows)


def outline_icon(size: int = 32) -> bytes:
    rows = []
    for j in range(size):
        row = []
        for i in range(size):
            c = glyph_coverage((i + 0.5) / size, (j + 0.5) / size)
            row.append((*WHITE, round(255 * c)))
        rows.append(row)
    return png(size, size, rows)


if __name__ == "__main__":
    (HERE / "color.png").write_bytes(color_icon())
    (HERE / "outline.png").write_bytes(outline_icon())
