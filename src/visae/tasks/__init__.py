"""visae.tasks."""
