"""Writes the Unity .meta file of every asset of the package that lacks one.

A package installed from a git URL is immutable: Unity ignores an asset without a .meta there, so
the package carries them. GUIDs are derived from the asset's path (stable, unique); an existing
.meta is never rewritten (its GUID may already be referenced by a project).

    python3 unity_sample/Tests~/ci/make_meta.py           # write the missing ones
    python3 unity_sample/Tests~/ci/make_meta.py --check   # list them, exit 1 if any is missing
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent.parent

IMPORTERS = {
    ".cs": "MonoImporter:\n  externalObjects: {}\n  serializedVersion: 2\n  defaultReferences: []\n"
    "  executionOrder: 0\n  icon: {instanceID: 0}\n",
    ".asmdef": "AssemblyDefinitionImporter:\n  externalObjects: {}\n",
    ".json": "PackageManifestImporter:\n  externalObjects: {}\n",
    ".md": "TextScriptImporter:\n  externalObjects: {}\n",
}
DEFAULT = "DefaultImporter:\n  externalObjects: {}\n"
TAIL = "  userData: \n  assetBundleName: \n  assetBundleVariant: \n"


def assets(root: Path) -> list[Path]:
    """Every file and folder Unity imports: not .meta files, nothing in or under a `name~` folder
    (Unity skips those: Tests~, and Samples~ until a sample is imported) or a dot-folder."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.endswith("~") or part.startswith(".") for part in rel.parts) or p.suffix == ".meta":
            continue
        out.append(p)
    return out


def meta_text(asset: Path) -> str:
    guid = hashlib.md5(("com.ksdiff.runtime-client/" + asset.relative_to(PACKAGE).as_posix()).encode()).hexdigest()
    if asset.is_dir():
        return f"fileFormatVersion: 2\nguid: {guid}\nfolderAsset: yes\n{DEFAULT}{TAIL}"
    return f"fileFormatVersion: 2\nguid: {guid}\n{IMPORTERS.get(asset.suffix, DEFAULT)}{TAIL}"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    missing = [a for a in assets(PACKAGE) if not Path(str(a) + ".meta").exists()]
    for a in missing:
        if check:
            print(f"missing: {a.relative_to(PACKAGE)}.meta")
        else:
            Path(str(a) + ".meta").write_text(meta_text(a))
    return 1 if check and missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
