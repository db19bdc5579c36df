"""visae.analysis."""
