"""visae.cache."""
