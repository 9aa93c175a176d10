"""Validate talo's OpenAPI document with openapi-spec-validator.

usage: openapi_check.py URL    prints {"valid": true, "paths": n}
"""
import json
import sys
import urllib.request

from openapi_spec_validator import validate


def main():
    with urllib.request.urlopen(sys.argv[1] + "/api/v1/openapi.json") as r:
        doc = json.load(r)
    validate(doc)
    print(json.dumps({"valid": True, "paths": len(doc["paths"])}))


if __name__ == "__main__":
    main()
