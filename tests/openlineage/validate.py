"""Validates OpenLineage run events, one JSON object per line on stdin,
against the vendored OpenLineage 2-0-2 schema and, each facet, against the
schema its `_schemaURL` names (the vendored facets, and Backfill's own in
docs/openlineage). Prints {"events": N, "facets": M, "errors": [...]}.
"""

import json
import pathlib
import sys

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

HERE = pathlib.Path(__file__).parent
FILES = [HERE / "OpenLineage.json", *sorted((HERE / "facets").glob("*.json"))]
FILES.append(HERE.parent.parent / "docs" / "openlineage" / "BackfillRunFacet.json")

schemas = {}
for path in FILES:
    schema = json.loads(path.read_text())
    schemas[schema["$id"]] = schema
registry = Registry().with_resources(
    (uri, Resource.from_contents(schema)) for uri, schema in schemas.items()
)


def validator(uri):
    """The validator of the schema at `uri` (`…json#/$defs/Name` or `…json`)."""
    base, _, pointer = uri.partition("#")
    if base not in schemas:
        return None
    schema = {"$ref": uri} if pointer else schemas[base]
    return Draft202012Validator(
        schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


errors = []
events = facets = 0
for line in sys.stdin:
    if not line.strip():
        continue
    event = json.loads(line)
    events += 1
    where = f"{event.get('job', {}).get('name')} {event.get('eventType')}"
    run_event = validator(event["schemaURL"])
    if run_event is None:
        errors.append(f"{where}: schemaURL {event['schemaURL']} is not vendored")
        continue
    errors += [f"{where}: {e.json_path}: {e.message}" for e in run_event.iter_errors(event)]
    for owner in ("run", "job"):
        for name, facet in event.get(owner, {}).get("facets", {}).items():
            facets += 1
            check = validator(facet.get("_schemaURL", ""))
            if check is None:
                errors.append(f"{where}: facet {name}: _schemaURL {facet.get('_schemaURL')} is not vendored")
                continue
            errors += [f"{where}: facet {name}: {e.json_path}: {e.message}" for e in check.iter_errors(facet)]

print(json.dumps({"events": events, "facets": facets, "errors": errors}))
