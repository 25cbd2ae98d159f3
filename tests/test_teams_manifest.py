"""The Teams app package: a v1.19 manifest that validates, icons of the right size with transparency
where Teams needs it, and a zip with exactly three files at its root."""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from handlers.teams import manifest as tm
from tests.fakes.teams_schemas import SchemaError, check_manifest

APP_ID = "0F3C2A51-7B6D-4E8F-9A10-B2C3D4E5F607"


def _png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Width, height, colour type and the unfiltered rows (filter type 0 only, as our icons are written)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, {}
    idat = b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        chunks[kind] = body
        if kind == b"IDAT":
            idat += body
        offset += 12 + length
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8
    raw = zlib.decompress(idat)
    stride = 1 + width * 4
    rows = [raw[i * stride : (i + 1) * stride] for i in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, colour, [row[1:] for row in rows]


def test_the_template_and_the_filled_manifest_validate_against_v1_19() -> None:
    template = tm.load_template()
    check_manifest(template)
    manifest = tm.fill_manifest(template, app_id=APP_ID, host="ackgate.acme.com")
    check_manifest(manifest)
    assert manifest["id"] == manifest["bots"][0]["botId"] == APP_ID.lower()
    assert manifest["validDomains"] == ["ackgate.acme.com"]
    assert manifest["developer"]["websiteUrl"] == "https://ackgate.acme.com/"
    assert template["id"] == "00000000-0000-0000-0000-000000000000"  # the template itself is untouched
    with pytest.raises(SchemaError):
        check_manifest({**manifest, "accentColor": "purple"})  # the validator is real


def test_the_command_menu_lists_the_four_commands() -> None:
    (commands,) = tm.load_template()["bots"][0]["commandLists"]
    assert [c["title"] for c in commands["commands"]] == ["access", "access list", "access help", "access admin status"]
    assert all(len(c["title"]) <= 32 and len(c["description"]) <= 128 for c in commands["commands"])


@pytest.mark.parametrize("app_id", ["", "not-a-guid", "0F3C2A51-7B6D-4E8F-9A10-B2C3D4E5F60"])
def test_an_app_id_that_is_not_a_guid_is_refused_with_the_setting_named(app_id: str) -> None:
    with pytest.raises(tm.PackageError, match="MICROSOFT_APP_ID"):
        tm.fill_manifest(tm.load_template(), app_id=app_id, host="ackgate.acme.com")


@pytest.mark.parametrize(
    ("public", "host"),
    [
        ("https://Ackgate.Acme.com/", "ackgate.acme.com"),
        ("ackgate.acme.com", "ackgate.acme.com"),
        ("https://a.b.io:8443/x", "a.b.io"),
    ],
)
def test_the_public_host_comes_from_a_url_or_a_host_name(public: str, host: str) -> None:
    assert tm.public_host(public) == host


@pytest.mark.parametrize("public", ["", "localhost", "http://", "https://exa mple.com/", "127.0.0.1"])
def test_a_host_teams_cannot_reach_is_refused(public: str) -> None:
    with pytest.raises(tm.PackageError, match="ACKGATE_PUBLIC_URL"):
        tm.public_host(public)


def test_the_colour_icon_is_192_square_and_opaque_inside() -> None:
    width, height, colour, rows = _png((tm.TEMPLATE_DIR / "color.png").read_bytes())
    assert (width, height, colour) == (192, 192, 6)
    centre = rows[96][96 * 4 : 96 * 4 + 4]
    assert centre[3] == 255


def test_the_outline_icon_is_32_square_white_on_transparent() -> None:
    width, height, colour, rows = _png((tm.TEMPLATE_DIR / "outline.png").read_bytes())
    assert (width, height, colour) == (32, 32, 6)  # colour type 6: RGBA, so it has an alpha channel
    pixels = [row[i : i + 4] for row in rows for i in range(0, len(row), 4)]
    assert pixels[0][3] == 0 and pixels[-1][3] == 0  # transparent background
    assert all(p[:3] == b"\xff\xff\xff" for p in pixels if p[3])  # only white strokes
    assert sum(1 for p in pixels if p[3] == 255) > 20


def test_the_package_zip_holds_the_three_files_at_its_root(tmp_path: Path) -> None:
    out = tmp_path / "ackgate-teams.zip"
    written = tm.build_package(APP_ID, "https://ackgate.acme.com/", out)
    with zipfile.ZipFile(out) as package:
        assert sorted(package.namelist()) == ["color.png", "manifest.json", "outline.png"]
        manifest = json.loads(package.read("manifest.json"))
        icons = {name: package.read(name) for name in ("color.png", "outline.png")}
    assert manifest == written
    check_manifest(manifest)
    assert set(manifest["icons"].values()) == set(icons)
    assert icons["color.png"] == (tm.TEMPLATE_DIR / "color.png").read_bytes()
