"""The results layer, at the bottom of the pipeline: what every stage writes and every reader reads.

- :mod:`~visae.results.schema` — the tidy results table (columns, metric names, validation, slices);
- :mod:`~visae.results.record` — the one writer of result-record JSON (metrics, tasks, raw diagnostic);
- :mod:`~visae.results.table` — result records → tidy rows, and reading/writing the tables;
- :mod:`~visae.results.names` — headline metric names and display names;
- :mod:`~visae.results.hypotheses` — the pre-registered hypothesis spec;
- :mod:`~visae.results.layout` — where a study's jobs put their outputs.

It imports nothing of visae but ``config``, ``io`` and ``errors``.
"""
