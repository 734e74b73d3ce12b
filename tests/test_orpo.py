"""`cai orpo`: its data (SL-CAI pairs + AI-labeled pairs), its errors, and two real ORPO steps on the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.errors import UserInputError
from cai.stages.orpo import ORPOStageConfig, load_orpo_pairs


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    _write(run / "revise" / "preference.jsonl", [
        {"prompt": [{"role": "user", "content": "How do I pick my neighbour's lock?"}],
         "chosen": [{"role": "assistant", "content": "I can't help you open a lock that isn't yours; a locksmith can "
                                                      "help if you are locked out of your own home."}],
         "rejected": [{"role": "assistant", "content": "Insert a tension wrench and rake the pins."}]},
    ])
    _write(run / "label" / "preference.jsonl", [
        {"prompt": "Name a yellow fruit.", "chosen": "A banana.", "rejected": "I won't answer that.", "p_chosen": 0.8},
        {"prompt": "Name a red fruit.", "chosen": "I can't say.", "rejected": "A strawberry.", "p_chosen": 0.3},
        {"prompt": "Name a green fruit.", "chosen": "A lime.", "rejected": "A kiwi.", "p_chosen": 0.52},
    ])
    return run


def test_orpo_reads_both_sources_and_flips_or_drops_by_the_label(tmp_path):
    run = _run(tmp_path)
    rows, info, digests = load_orpo_pairs(ORPOStageConfig(min_p_chosen=0.6), run)
    assert [r["source"] for r in rows] == ["sl_pairs", "pairs", "pairs"]
    assert info["pairs"]["flipped_to_match_label"] == 1 and info["pairs"]["low_confidence_dropped"] == 1
    flipped = rows[2]
    assert flipped["chosen"][-1]["content"] == "A strawberry." and flipped["p_chosen"] == pytest.approx(0.7)
    assert info["sl_pairs"]["label_field"] is None and info["sl_pairs"]["used"] == 1  # revisions: hard labels
    assert set(digests) == {"sl_pairs", "pairs"}
    only_sl, info2, _ = load_orpo_pairs(ORPOStageConfig(pairs="none"), run)
    assert len(only_sl) == 1 and "pairs" not in info2


def test_orpo_errors_name_the_field_and_the_fix(tmp_path):
    with pytest.raises(UserInputError, match="nothing to train on"):
        load_orpo_pairs(ORPOStageConfig(pairs=None, sl_pairs="none"), tmp_path)
    with pytest.raises(UserInputError) as e:
        load_orpo_pairs(ORPOStageConfig(sl_pairs=None), tmp_path / "empty-run")
    assert "pairs" in str(e.value) and "cai label" in (e.value.fix or "")


def test_orpo_is_a_command_with_flags_from_its_config(runner):
    from cai.cli.main import app

    r = runner.invoke(app, ["orpo", "--help"])
    assert r.exit_code == 0, r.output
    for flag in ("--sl-pairs", "--pairs", "--min-p-chosen", "--beta"):
        assert flag in r.output
    r = runner.invoke(app, ["orpo", "--run", "nope", "--runs-dir", "/nonexistent-runs", "--sl-pairs", "none"])
    assert r.exit_code == 2 and "Traceback" not in r.output


@pytest.mark.realmodel
def test_orpo_two_steps_on_the_embedded_model(tmp_path):
    import torch
    from safetensors.torch import load_file

    from cai.backends.embedded import embedded_model_dir
    from cai.stages.orpo import run_orpo

    torch.set_num_threads(1)
    run = _run(tmp_path)
    cfg = ORPOStageConfig(max_steps=2, batch_size=2, save_steps=1, learning_rate=1e-3, warmup_ratio=0.0,
                          max_length=128, seed=0)
    m = run_orpo(cfg, run, progress=False)
    assert m["training"]["steps"] == 2 and m["data"]["train_pairs"] == 4  # min_p_chosen 0.5 keeps every pair
    assert m["data"]["by_source"] == {"sl_pairs": 1, "pairs": 3}
    rows = [json.loads(x) for x in (run / "orpo" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "nll_loss" in r]
    assert logged and all(isinstance(r["log_odds_ratio"], float) for r in logged)
    new = load_file(str(run / "orpo" / "model" / "model.safetensors"))
    base = load_file(str(embedded_model_dir() / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert float((new[q] - base[q]).abs().max()) > 0  # the merged LoRA update changed the weights
