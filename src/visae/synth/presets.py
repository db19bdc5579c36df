"""Named presets: each plants one kind of structure (docs/synthetic.md, "Presets").

- ``spatial``: objects and backgrounds. Class features are compact blobs, generic features blobs or large
  regions; M1 of a faithful SAE sits well above the null.
- ``null``: the same model with every footprint spatially random (MAE-like in the paper): M1 of any SAE
  sits at −1/(P − 1).
- ``hierarchical``: 4 superclasses × 3 classes; a parent feature per superclass, a class feature per class
  and 3 variants per class (child implies parent); every image shows its class's feature and one variant.
  M7's sibling groups are the superclasses, so absorption
  is planted; an SAE that absorbs the class feature into its variants is counted by M7 and by recovery.
- ``easy``: 16 orthogonal features in 32 dimensions, little noise: a BatchTopK SAE of 16 latents at K = 1
  recovers most of them in seconds.
- ``superposed``: more features than dimensions (F* = 4·D): recovery under superposition.
- ``paper``: the paper's shapes (D 768, 16 × 16 patches), the spatial structure.
"""

from __future__ import annotations

from typing import Any

from visae.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "spatial": {},
    "null": {"blob_share": 0.0, "region_share": 0.0, "class_kind": "random"},
    "hierarchical": {"n_classes": 12, "n_groups": 4, "class_features": 1, "variants": 3, "n_features": 64,
                     "d": 96, "features_per_image": 3.0, "p_class": 1.0, "p_off_class": 0.0},
    "easy": {"n_features": 16, "d": 32, "n_classes": 4, "class_features": 1, "features_per_image": 3.0,
             "noise": 0.01, "n_images": 1000},
    "superposed": {"n_features": 256, "d": 64, "features_per_image": 8.0, "overlap": 0.1},
    "paper": {"d": 768, "grid": 16, "n_features": 3072, "n_classes": 100, "class_features": 2,
              "features_per_image": 24.0, "n_images": 2000},
}
"""Preset name → the settings it changes from :class:`visae.synth.config.SynthConfig`'s defaults."""


def preset_settings(name: str) -> dict[str, Any]:
    """The settings of preset ``name`` (ConfigError naming the known presets otherwise)."""
    if name not in PRESETS:
        raise ConfigError(f"synth preset {name!r}: unknown; choose one of {', '.join(PRESETS)}")
    return {"preset": name, **PRESETS[name]}
