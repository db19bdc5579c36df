"""visae.metrics."""
