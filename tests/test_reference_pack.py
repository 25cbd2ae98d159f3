"""The reference documents live in the repository, unchanged, and no test reads anything outside it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tests.fakes.reference import REFERENCE

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# A path climbing out of the repository, or naming the reference pack that used to sit beside it.
OUTSIDE = re.compile(r"/work/shared|\.\./shared|[\"']shared[\"']\s*/|parents\[\d\]\.parent|REPO(_ROOT)?\.parent")


def _listed() -> dict[str, str]:
    lines = (REFERENCE / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    return {name: digest for digest, name in (line.split(maxsplit=1) for line in lines if line.strip())}


def test_every_reference_document_matches_its_recorded_checksum() -> None:
    listed = _listed()
    assert len(listed) >= 40
    for name, digest in listed.items():
        assert hashlib.sha256((REFERENCE / name).read_bytes()).hexdigest() == digest, f"{name} was changed"


def test_every_file_in_the_pack_is_recorded_and_every_folder_keeps_its_readme() -> None:
    on_disk = {str(p.relative_to(REFERENCE)) for p in REFERENCE.rglob("*") if p.is_file() and p.parent != REFERENCE}
    assert on_disk == set(_listed())
    for folder in {Path(name).parts[0] for name in on_disk}:
        assert (REFERENCE / folder / "README.md").is_file(), f"{folder}/ has no README naming its sources"


def test_no_test_reads_from_beside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted(TESTS.rglob("*.py"))
        if path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == [], "these lines read outside the repository; use tests/fakes/reference.py"
