"""How much a user installs: the light runtime (serve, bake; no torch) against the full one (training).

    python -m benchmarks.install_size        # two fresh venvs in a temporary folder, ~5 min

Each venv is made with this Python, filled with pip from the package registries as a user would
(`pip install ./sdk_python .` and `pip install torch==2.13.0 ./sdk_python .[train]`, then each
`pip install --no-deps silero-vad==6.2.3`), measured on
disk, and checked to run: the light one bakes the bundled sample. Writes benchmarks/install_size.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# silero-vad (the voice gate's model) without its dependencies: its Python code, which needs torch, is not used
KINDS = {
    "light": [["./sdk_python", "."], ["--no-deps", "silero-vad==6.2.3"]],
    "full": [["torch==2.13.0"], ["./sdk_python", ".[train]"], ["--no-deps", "silero-vad==6.2.3"]],
}


def du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def measure(kind: str, folder: Path) -> dict:
    venv = folder / kind
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir"]
    for packages in KINDS[kind]:
        subprocess.run(pip + packages, check=True, cwd=ROOT)
    installed = time.monotonic() - t0
    out = folder / f"{kind}.json"
    bake = subprocess.run([str(venv / "bin" / "ksdiff-runtime"), "bake", "-o", str(out)], capture_output=True,
                          text=True, cwd=folder)
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True)
    packages = [line.split("==")[0].lower() for line in freeze.stdout.splitlines() if "==" in line]
    return {
        "venv_mib": round(du_mib(venv), 1),
        "install_s": round(installed, 1),
        "packages": len(packages),
        "has_torch": "torch" in packages,
        "bake_ok": bake.returncode == 0 and out.is_file(),
        "bake_tail": bake.stdout.strip().splitlines()[-1:] or bake.stderr.strip().splitlines()[-3:],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.install_size", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "install_size.json", help="results file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ksdiff-install-") as tmp:
        doc = {"python": sys.version.split()[0], **{kind: measure(kind, Path(tmp)) for kind in KINDS}}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    for kind in KINDS:
        print(f"{kind}: {doc[kind]['venv_mib']:.0f} MiB, {doc[kind]['packages']} packages, torch "
              f"{'yes' if doc[kind]['has_torch'] else 'no'}, bake {'ok' if doc[kind]['bake_ok'] else 'FAILED'}")
    return 0 if all(doc[k]["bake_ok"] for k in KINDS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
