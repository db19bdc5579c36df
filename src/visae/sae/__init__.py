"""visae.sae."""
