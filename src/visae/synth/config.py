"""Settings of the synthetic patch-activation generator (``visae synth``): every part of the generative
model (docs/synthetic.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from visae.config import FrozenConfig

FootprintKind = Literal["blob", "region", "random"]


class SynthConfig(FrozenConfig):
    """One synthetic model: dictionary, footprints, classes, hierarchy, magnitudes, noise; and how many
    images of which split to draw from it. A preset fills these (:mod:`visae.synth.presets`)."""

    preset: str = Field("custom", description="name of the preset these settings came from (part of the "
                                              "cache name)")
    n_images: int = Field(512, ge=1, description="images (rows) in the cache")
    split: Literal["train", "val", "test"] = Field(
        "train", description="image stream: the splits draw different images from the same model")
    grid: int = Field(8, ge=3, description="patch grid side H = W (P = H²; paper: 14 or 16)")
    d: int = Field(64, ge=2, description="activation width D (paper: 768)")
    n_features: int = Field(64, ge=1, description="planted features F* (dictionary atoms)")
    n_classes: int = Field(8, ge=2, description="image classes")
    class_features: int = Field(2, ge=0, description="informative features per class (present with "
                                                     "p_class in images of the class)")
    n_groups: int = Field(0, ge=0, description="hierarchy: superclasses, each a parent feature over its "
                                               "classes' features (0: no hierarchy); each group needs "
                                               "≥ 3 classes (M7's sibling groups)")
    variants: int = Field(0, ge=0, description="hierarchy: child features per class, exactly one present "
                                               "with the class's first feature (0: none)")
    overlap: float = Field(0.0, ge=0.0, lt=1.0,
                           description="superposition: 0 gives orthonormal atoms when F* ≤ D; larger "
                                       "values mix every atom with a shared low-rank subspace (higher "
                                       "mutual cosine)")
    blob_share: float = Field(0.6, ge=0.0, le=1.0, description="share of the generic features whose "
                                                                "footprint is a compact blob")
    region_share: float = Field(0.4, ge=0.0, le=1.0, description="share of the generic features whose "
                                                                  "footprint is a large region; the rest "
                                                                  "fire at spatially random patches")
    class_kind: FootprintKind = Field("blob", description="footprint of the class (and variant) features")
    blob_radius: float = Field(1.6, gt=0.0, description="mean blob radius in patches (each feature: "
                                                        "×U(0.8, 1.2))")
    region_area: float = Field(0.4, gt=0.0, lt=1.0, description="fraction of the grid a region covers")
    random_density: float = Field(0.15, gt=0.0, le=1.0,
                                  description="probability that a spatially random feature fires on a "
                                              "patch")
    features_per_image: float = Field(6.0, ge=0.0, description="expected generic features present per "
                                                               "image")
    p_class: float = Field(0.95, ge=0.0, le=1.0, description="probability that a class feature is present "
                                                             "in an image of its class")
    p_off_class: float = Field(0.02, ge=0.0, le=1.0, description="probability that it is present in an "
                                                                 "image of another class")
    p_parent_alone: float = Field(0.1, ge=0.0, le=1.0, description="probability that a parent is present "
                                                                   "without any of its children")
    magnitude_min: float = Field(1.0, gt=0.0, description="smallest base magnitude of a feature")
    magnitude_max: float = Field(3.0, gt=0.0, description="largest base magnitude (log-uniform between)")
    jitter: float = Field(0.1, ge=0.0, le=0.5, description="relative sd of a feature's value across its "
                                                           "patches")
    noise: float = Field(0.02, ge=0.0, description="sd of isotropic Gaussian noise added to every token")
    bias_norm: float = Field(1.0, ge=0.0, description="norm of the constant offset added to every token")
    seed: int = Field(0, description="seed of the model (dictionary, footprints) and of the image stream")
    out: Path = Field(Path("caches"), description="root folder; the cache goes in a sub-folder named by "
                                                  "its hash")
    shard_images: int = Field(256, ge=1, description="images per shard file (and per resume unit)")
    batch_size: int = Field(64, ge=1, description="images generated per batch")
    progress: bool = Field(True, description="show a progress bar")

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if self.blob_share + self.region_share > 1.0 + 1e-9:
            raise ValueError(f"blob_share + region_share = {self.blob_share + self.region_share} exceeds 1")
        if self.magnitude_max < self.magnitude_min:
            raise ValueError(f"magnitude_max ({self.magnitude_max}) < magnitude_min ({self.magnitude_min})")
        if self.n_groups and self.n_classes < 3 * self.n_groups:
            raise ValueError(f"n_classes ({self.n_classes}) must be ≥ 3 × n_groups ({self.n_groups}): M7's "
                             "sibling groups need ≥ 3 classes each")
        if self.variants and self.class_features < 1:
            raise ValueError("variants need class_features ≥ 1 (a variant's parent is its class's first "
                             "feature)")
        structured = self.n_groups + self.n_classes * (self.class_features + self.variants)
        if structured > self.n_features:
            raise ValueError(f"n_features ({self.n_features}) is smaller than the structured features "
                             f"({self.n_groups} parents + {self.n_classes} classes × ({self.class_features} "
                             f"class + {self.variants} variant features) = {structured}); raise n_features")
        return self

    def model_key(self) -> dict[str, object]:
        """The settings that define the model (not the image count, split or where it is written)."""
        return self.model_dump(mode="json", exclude={"n_images", "split", "out", "shard_images", "batch_size",
                                                     "progress", "preset"})
