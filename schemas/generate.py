"""Write the JSON Schema files in `schemas/json/` from the pydantic models.

Run `python -m schemas.generate` after changing a model; a test fails while they differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from schemas.records import WIRE_MODELS

SCHEMA_DIR = Path(__file__).parent / "json"


def render() -> dict[str, str]:
    """File name -> JSON text, for every wire model."""
    out: dict[str, str] = {}
    for name, model in WIRE_MODELS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"{name}.schema.json"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for file_name, text in render().items():
        (SCHEMA_DIR / file_name).write_text(text)
        print(f"wrote {SCHEMA_DIR / file_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
