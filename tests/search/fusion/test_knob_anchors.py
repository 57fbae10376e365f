"""ORT's quantizer options searched as lists: the sampler reads them only where they matter, and the
study's anchors (search/anchors.py) name a value for each, so an enqueued anchor samples completely."""

from __future__ import annotations

import pytest
from optuna.trial import FixedTrial

from search.layers import LayerInfo
from search.params import parse_options
from search.techniques import REGISTRY, TechniqueSpace
from search.techniques.quantize.anchors import quantize_anchors


def _space(**body) -> TechniqueSpace:
    technique = REGISTRY.named("quantize")
    dims = parse_options("s.yaml", "techniques.quantize", technique.rules, body)
    return TechniqueSpace("quantize", dims, tuple(LayerInfo(f"enc.{i}", "linear", (64, 64)) for i in range(2)))


@pytest.mark.parametrize("saturates", [False, True])
def test_searched_knobs_are_sampled_where_they_matter_and_anchors_set_them(saturates, monkeypatch) -> None:
    # The int8 anchor takes the weight range that is more accurate on the host: 7 bits where int8 saturates.
    monkeypatch.setattr("search.techniques.quantize.anchors.int8_saturates", lambda: saturates)
    space = _space(bits=["int8", "int4"], activations=["static", "dynamic"], reduce_range=[False, True],
                   preprocess=[False, True], symmetric_activations=[False, True], int4_accuracy_level=[0, 4])
    technique = REGISTRY.named("quantize")
    anchors = quantize_anchors(space)
    int8, int4 = (technique.sample(FixedTrial(a.params), space) for a in anchors)  # raises if a param is missing
    assert (int8.reduce_range, int8.preprocess, int8.int4_accuracy_level) == (saturates, False, 0)
    assert set(int4.layer_bits.values()) == {"int4"} and int4.int4_accuracy_level == 4
    assert "quantize.reduce_range" not in anchors[1].params  # no int8 layer: the knob is not sampled
    static = {"quantize.bits.enc.0": "int8", "quantize.bits.enc.1": "int8", "quantize.activations": "static",
              "quantize.per_channel": True, "quantize.calibration": "minmax", "quantize.reduce_range": True,
              "quantize.preprocess": True, "quantize.symmetric_activations": True, "quantize.embedding_bits": "fp32",
              "quantize.mode": "ptq"}
    config = technique.sample(FixedTrial(static), space)
    assert (config.reduce_range, config.preprocess, config.symmetric_activations) == (True, True, True)
    assert "reduce-range preprocessed symmetric-act" in config.summary()
    assert type(config).from_dict(config.to_dict()) == config  # JSON round trip with the new fields
