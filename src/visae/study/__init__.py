"""visae.study."""
