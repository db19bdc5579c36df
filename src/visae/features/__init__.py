"""Per-feature views of trained SAEs (Fig. 5, the feature browser): one streaming pass over an evaluation
cache gives each feature's frequency and top images (:mod:`~visae.features.scan`);
:mod:`~visae.features.views`
picks the features to show and renders their top images with patch activation overlays as base64 PNG."""
