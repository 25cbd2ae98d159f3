"""The Teams app package: ``manifests/teams/manifest.json`` (v1.19) filled in for one deployment and
zipped with its two icons at the root, ready to upload in Teams (Apps → Manage your apps → Upload).

:func:`fill_manifest` sets the app ``id`` and ``bots[0].botId`` to the Azure Bot's Microsoft App ID (a GUID),
and ``validDomains`` plus the developer URLs to Ackgate's public host. :func:`build_package` writes the zip
(``manifest.json``, ``color.png``, ``outline.png``, nothing else). ``ackgate manifest teams --zip FILE`` calls ``build_package(settings.microsoft_app_id, <host of
ACKGATE_PUBLIC_URL>, FILE)``.
"""

from __future__ import annotations

import copy
import json
import re
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "manifests" / "teams"
MANIFEST = "manifest.json"
ICONS = ("color.png", "outline.png")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HOST = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


class PackageError(ValueError):
    """A value needed for the package is wrong; the message says which and how to fix it."""


def public_host(public: str) -> str:
    """The host of ``public`` (a URL such as ``https://ackgate.example.com/`` or a bare host name)."""
    host = (urlsplit(public).hostname if "://" in public else public.strip().rstrip("/")) or ""
    host = host.lower()
    if not _HOST.match(host):
        raise PackageError(
            f"{public!r} is not a public host name. Set ACKGATE_PUBLIC_URL to the https address Teams reaches Ackgate at."
        )
    return host


def load_template(template_dir: Path = TEMPLATE_DIR) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((template_dir / MANIFEST).read_text(encoding="utf-8"))
    return manifest


def fill_manifest(template: dict[str, Any], *, app_id: str, host: str) -> dict[str, Any]:
    """The template with this deployment's app id, bot id and domain."""
    if not _GUID.match(app_id or ""):
        raise PackageError(
            f"MICROSOFT_APP_ID {app_id!r} is not a GUID. Copy the Microsoft App ID from the Azure Bot's Configuration page."
        )
    manifest = copy.deepcopy(template)
    manifest["id"] = app_id.lower()
    for bot in manifest.get("bots", []):
        bot["botId"] = app_id.lower()
    manifest["validDomains"] = [host]
    site = f"https://{host}/"
    manifest["developer"] = {**manifest["developer"], "websiteUrl": site, "privacyUrl": site, "termsOfUseUrl": site}
    return manifest


def build_package(
    app_id: str, public: str, out_zip: Path | str, *, template_dir: Path = TEMPLATE_DIR
) -> dict[str, Any]:
    """Write the app package to ``out_zip``; returns the manifest written."""
    manifest = fill_manifest(load_template(template_dir), app_id=app_id, host=public_host(public))
    out = Path(out_zip)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as package:
        package.writestr(MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        for icon in ICONS:
            package.write(template_dir / icon, arcname=icon)
    return manifest
