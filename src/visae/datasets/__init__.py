"""visae.datasets."""
