"""visae.backbones."""
