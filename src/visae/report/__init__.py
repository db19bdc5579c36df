"""visae.report."""
