"""Print the figures of a fuzz survey (``make fuzz-soak``): per entry point, the examples sent, the
share answered 5xx or with a traceback, the distinct causes, and the slow answers.

Usage: ``python -m tests.reliability.fuzz_report fuzz-report.json``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summary(report: dict[str, dict[str, object]]) -> str:
    lines = []
    total = sum(int(str(r["examples"])) for r in report.values())
    failing = sum(int(str(r["failing_answers"])) for r in report.values())
    slow = sum(int(str(r["slow_answers"])) for r in report.values())
    causes = {key.split(" <- ")[-1] for r in report.values() for key in r["causes"]}  # type: ignore[attr-defined]
    share = f"{failing / total:.2%}" if total else "n/a"
    lines.append(f"{total} examples: {failing} answered 5xx or with a traceback ({share}), {slow} slower than 1 s")
    lines.append(f"distinct causes: {len(causes)} ({', '.join(sorted(causes)) or 'none'})")
    for name, r in sorted(report.items()):
        lines.append(
            f"  {name}: {r['examples']} examples, {r['failing_answers']} failing ({r['failing_share']:.2%}), "  # type: ignore[str-format]
            f"{r['slow_answers']} slow, slowest {r['slowest_seconds']} s, {r['chat_tracebacks']} chat tracebacks, "
            f"{r.get('log_leaks', 0)} log lines leaking or over-long"
        )
        for key, entry in r["causes"].items():  # type: ignore[attr-defined]
            inputs = ", ".join(f"{label} ×{n}" for label, n in list(entry["inputs"].items())[:4])
            lines.append(f"    {entry['count']:>6}  {key}: {inputs}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "fuzz-report.json")
    if not path.exists():
        print(f"no fuzz report at {path}")
        return 1
    print(summary(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
