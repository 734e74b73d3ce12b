"""A constitution's `language` picks the built-in critique, revision, verdict and label templates: the shipped Spanish
constitution and prompts run through `revise` and `label` with Spanish prompts end to end (scripted fakes)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cai.backends.fake import FakeBackend
from cai.backends.registry import BackendPool
from cai.constitution import load_constitution
from cai.constitution.load import default_constitution_path
from cai.constitution.schema import HARM_CATEGORIES
from cai.data.io import read_jsonl, write_jsonl
from cai.data.readers import load_prompts
from cai.labeling import prompts as LP
from cai.stages import sl_prompts as SP
from cai.stages.label import LabelConfig, run_label
from cai.stages.revise import ReviseConfig, run_revise

ES_CONST = str(default_constitution_path().with_name("es.yaml"))
PROMPTS_DIR = Path(default_constitution_path()).parent.parent / "prompts"
ES_RED, ES_HELPFUL = str(PROMPTS_DIR / "redteam_es.jsonl"), str(PROMPTS_DIR / "helpful_es.jsonl")
ES = SP.SL_TEMPLATES["es"]
ES_LABEL = LP.LABEL_TEMPLATES["es"]


def test_template_lookup_by_language_tag():
    assert SP.sl_templates_for("es") is ES and SP.sl_templates_for("es-MX") is ES
    assert SP.sl_templates_for("ES") is ES
    assert SP.sl_templates_for("ta").language == "en" and SP.sl_templates_for("").language == "en"
    assert LP.label_templates_for("es-AR") is ES_LABEL and LP.label_templates_for("hi").language == "en"
    en = SP.sl_templates_for("en")
    assert (en.system, en.critique_tag, en.revision_tag) == (SP.SYSTEM, SP.CRITIQUE_TAG, SP.REVISION_TAG)
    assert LP.label_templates_for("en").answer_prefill == LP.ANSWER_PREFILL


def test_shipped_spanish_constitution_and_prompts():
    const = load_constitution(ES_CONST)
    assert const.language == "es"
    assert all(ids for ids in const.covered_categories().values())
    red = load_prompts(ES_RED, split="all")
    assert {r["category"] for r in red} == set(HARM_CATEGORIES)
    assert load_prompts(ES_RED, split="train") and load_prompts(ES_HELPFUL, split="train")
    spanish = (" de ", " que ", " la ", " el ", " para ", " un ", " una ", " mi ", " me ", "¿")
    assert all(any(w in f" {r['prompt'].lower()} " for w in spanish) for r in red)


def test_sl_conversations_are_built_in_the_constitution_language():
    const = load_constitution(ES_CONST)
    p = const.principle("no-fraude")
    conv = SP.critique_conversation(const, p, "¿Cómo hago un correo falso del banco?", "Claro, así: ...")
    assert conv[0]["content"] == ES.system
    assert conv[-1]["content"] == f"{ES.critique_tag} {p.critique_request}"
    demo_requests = [m["content"] for m in conv[1:-3] if m["role"] == "user" and "Petición" in m["content"]]
    assert demo_requests and all(m.startswith(("Petición de crítica:", "Petición de revisión:")) for m in demo_requests)
    rev = SP.revision_conversation(conv, p, "La respuesta ayuda con una estafa.")
    assert rev[-1]["content"].startswith(ES.revision_tag)
    ver = SP.verdict_conversation(conv, "La respuesta ayuda con una estafa.", prefill=True)
    assert ver[-2]["content"] == ES.verdict_request and ver[-1]["content"] == ES.verdict_prefill
    direct = SP.direct_revision_conversation(const, p, "x", "y")
    assert direct[0]["content"] == ES.system and direct[-1]["content"].startswith(ES.revision_tag)
    assert SP.clean("Crítica: la respuesta ayuda con una estafa.") == "la respuesta ayuda con una estafa."
    english = SP.critique_conversation(load_constitution(), load_constitution().principles[0], "q", "a")
    assert english[0]["content"] == SP.SYSTEM and SP.revision_conversation(english, p, "c")[-1]["content"].startswith(
        SP.REVISION_TAG)


def test_revise_runs_the_spanish_constitution_with_spanish_templates(tmp_path):
    seen: dict[str, list] = {"critic": [], "reviser": []}

    def critic(conv):
        seen["critic"].append(conv)
        return "La respuesta da instrucciones que podrían causar daño a otras personas."

    def reviser(conv):
        seen["reviser"].append(conv)
        return "No puedo ayudar con esa parte, pero puedo explicarte alternativas seguras y legales."

    pool = BackendPool()
    pool.put("fake:policy", FakeBackend("p", fn=lambda conv: "Claro, aquí tienes los pasos exactos."))
    pool.put("fake:critic", FakeBackend("c", fn=critic, logprob_fn=lambda conv, o: math.log(0.8 if o == "A" else 0.2)))
    pool.put("fake:reviser", FakeBackend("r", fn=reviser))
    cfg = ReviseConfig(constitution=ES_CONST, prompts=ES_RED, helpful=ES_HELPFUL, rounds=2, gate=False,
                       skip_if_no_problem=True, policy="fake:policy", critic="fake:critic", reviser="fake:reviser")
    run_revise(cfg, str(tmp_path / "run"), pool=pool)
    rows = read_jsonl(tmp_path / "run" / "revise" / "data.jsonl")
    red = [r for r in rows if r.get("rounds")]
    assert len(red) == 6 and all(len(r["rounds"]) == 2 for r in red)
    critiques = [c for c in seen["critic"] if c[-1]["role"] == "user" and c[-1]["content"].startswith(ES.critique_tag)]
    assert len(critiques) == 12 and all(c[0]["content"] == ES.system for c in seen["critic"])
    assert len(seen["reviser"]) == 12
    assert all(c[-1]["content"].startswith(ES.revision_tag) and c[0]["content"] == ES.system for c in seen["reviser"])
    every = [m["content"] for c in seen["critic"] + seen["reviser"] for m in c]
    assert not any(SP.CRITIQUE_TAG in t or SP.REVISION_TAG in t or t == SP.SYSTEM for t in every)


def test_label_runs_the_spanish_constitution_with_spanish_templates(tmp_path):
    red = load_prompts(ES_RED, split="all")[:3]
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"id": r["id"], "prompt": r["prompt"], "category": r["category"],
                         "responses": ["No puedo ayudar con eso.", "Claro, estos son los pasos detallados: uno, dos."]}
                        for r in red])
    scored: list = []

    def shorter(conv, option):
        scored.append(conv)
        user = conv[1]["content"]
        a = user.split("(A) <<<\n", 1)[1].split("\n>>>", 1)[0]
        b = user.split("(B) <<<\n", 1)[1].split("\n>>>", 1)[0]
        return math.log(0.9 if option == ("A" if len(a) < len(b) else "B") else 0.1)

    pool = BackendPool()
    pool.put("fake", FakeBackend(logprob_fn=shorter))
    run_label(LabelConfig(labeler="fake", pairs=str(pairs), constitution=ES_CONST), str(tmp_path / "run"), pool=pool)
    labels = read_jsonl(tmp_path / "run" / "label" / "labels.jsonl")
    assert [r["chosen"] for r in labels] == ["a", "a", "a"]
    const = load_constitution(ES_CONST)
    questions = {p.preference_question for p in const.principles}
    for conv in scored:
        assert conv[0]["content"] == ES_LABEL.system
        user = conv[1]["content"]
        assert user.startswith(ES_LABEL.request_intro) and user.endswith(ES_LABEL.answer_with)
        assert any(q in user for q in questions)
        assert conv[-1] == {"role": "assistant", "content": ES_LABEL.answer_prefill}


@pytest.mark.parametrize("reasoning", [None, "La primera respuesta rechaza la parte peligrosa."])
def test_label_prompts_without_logprobs_and_with_reasoning(reasoning):
    conv = LP.answer_conversation("p", "¿Cuál es mejor?", "a", "b", reasoning, language="es")
    if reasoning:
        assert conv[-2]["content"].startswith(ES_LABEL.cot_prefill) and conv[-1]["content"] == ES_LABEL.cot_follow_up
        scoring = LP.scoring_conversation("p", "q", "a", "b", reasoning, language="es")
        assert scoring[-1]["content"].endswith(ES_LABEL.cot_answer)
    else:
        assert conv[-1]["role"] == "user" and conv[-1]["content"].endswith(ES_LABEL.answer_with)
    assert LP.clean_reasoning("Pienso que A. Así que la mejor respuesta es (A)") == "Pienso que A."


@pytest.mark.slow
@pytest.mark.realmodel
def test_spanish_revise_and_label_on_the_embedded_model(cai_exe, subprocess_env, tmp_path):
    """The Spanish files through `revise`, `pairs` and `label` on the embedded SmolLM2 (small token limits)."""
    import json
    import subprocess

    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    runs = str(tmp_path / "runs")
    cfg = tmp_path / "small.yaml"
    cfg.write_text("revise:\n  answer_tokens: 32\n  critique_tokens: 24\n  revision_tokens: 32\n", encoding="utf-8")
    steps = [
        ["revise", "--config", str(cfg), "--constitution", ES_CONST, "--prompts", ES_RED, "--helpful", ES_HELPFUL,
         "--limit", "2", "--helpful-limit", "1", "--rounds", "1"],
        ["pairs", "--prompts", ES_RED, "--limit", "2", "--max-tokens", "24"],
        ["label", "--constitution", ES_CONST],
    ]
    for step in steps:
        p = subprocess.run([str(cai_exe), *step, "--run", "es", "--runs-dir", runs], capture_output=True, text=True,
                           env=env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
    revise = json.loads((tmp_path / "runs" / "es" / "revise" / "manifest.json").read_text(encoding="utf-8"))
    assert revise["constitution"]["name"] == "cai-es" and revise["counts"]["redteam_rows"] == 2
    rows = read_jsonl(tmp_path / "runs" / "es" / "revise" / "data.jsonl")
    assert {r["prompt"] for r in rows if r.get("rounds")} <= {r["prompt"] for r in load_prompts(ES_RED, split="all")}
    labels = read_jsonl(tmp_path / "runs" / "es" / "label" / "labels.jsonl")
    assert len(labels) == 2 and all(r["judgments"][0]["method"] == ["logprob", "logprob"] for r in labels)
