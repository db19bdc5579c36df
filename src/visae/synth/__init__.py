"""Synthetic patch activations with a planted ground truth (docs/synthetic.md).

``generate(preset, out, **settings)`` writes an ordinary visae activation cache drawn from a known model
(dictionary, spatial footprints, classes, hierarchy) and the ground-truth file beside it;
``GroundTruth.load(cache)`` reads what was planted; ``oracle_sae(truth)`` builds the SAE that knows it.
"""

from __future__ import annotations

from visae.synth.config import SynthConfig
from visae.synth.generate import generate, synth_config
from visae.synth.presets import PRESETS
from visae.synth.truth import GroundTruth

__all__ = ["PRESETS", "GroundTruth", "SynthConfig", "generate", "synth_config"]
