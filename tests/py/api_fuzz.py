"""Fuzz talo's HTTP API from its own OpenAPI document with schemathesis.

usage: api_fuzz.py URL [MAX_EXAMPLES [HEADER]]   (HEADER e.g. "Authorization: Bearer x")
prints {"ok": bool, "cases": n, "tail": "..."}

Checks: no 5xx answer, every status and content type is one the document lists, and
every JSON body matches its documented schema. The seed is fixed, so a failure repeats.
"""
import json
import os
import re
import subprocess
import sys
import tempfile


def main():
    url = sys.argv[1].rstrip("/")
    examples = sys.argv[2] if len(sys.argv) > 2 else "30"
    header = ["-H", sys.argv[3]] if len(sys.argv) > 3 else []
    cli = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    cmd = [cli, "run", f"{url}/api/v1/openapi.json", "--url", url,
           "--checks", "not_a_server_error,status_code_conformance,"
                       "content_type_conformance,response_schema_conformance",
           "--max-examples", examples, "--seed", "20261127", "--no-color"] + header
    # schemathesis keeps its example database in the working directory: not in the tree
    with tempfile.TemporaryDirectory() as cwd:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=cwd)
    out = p.stdout
    m = re.search(r"(\d+) generated", out)
    print(json.dumps({"ok": p.returncode == 0, "cases": int(m.group(1)) if m else 0,
                      "tail": out[-6000:]}))


if __name__ == "__main__":
    main()
