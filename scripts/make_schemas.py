"""Write the JSON Schemas of visae's result files under ``schemas/`` from the pydantic models
(visae.results.saebench.SCHEMAS). tests/results/test_saebench.py checks that the committed files equal what
this script writes.

Usage: ``python scripts/make_schemas.py [--out schemas]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visae.results.saebench import json_schemas


def render(schema: dict) -> str:
    """The committed text of one schema."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> None:
    """Write every schema."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "schemas")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for stem, schema in json_schemas().items():
        (args.out / f"{stem}.schema.json").write_text(render(schema), encoding="utf-8")
        print(args.out / f"{stem}.schema.json")


if __name__ == "__main__":
    main()
