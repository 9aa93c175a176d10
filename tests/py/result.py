"""Decode a query result file with readers we did not write.

usage: result.py FORMAT FILE   (FORMAT: json, jsonl, csv, arrow, parquet)
Prints JSON: {"rows": n, "columns": [...], "first": {...}} using pyarrow for arrow/parquet
and Python's own json/csv modules for the text formats.
"""
import csv
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    fmt, path = sys.argv[1:3]
    if fmt == "arrow":
        with open(path, "rb") as f:
            t = pa.ipc.open_stream(f).read_all()
        rows = t.to_pylist()
        out = {"rows": t.num_rows, "columns": t.column_names, "types": [str(x) for x in t.schema.types]}
    elif fmt == "parquet":
        t = pq.read_table(path)
        rows = t.to_pylist()
        out = {"rows": t.num_rows, "columns": t.column_names, "types": [str(x) for x in t.schema.types]}
    elif fmt == "json":
        with open(path) as f:
            rows = json.load(f)
        out = {"rows": len(rows), "columns": list(rows[0].keys()) if rows else []}
    elif fmt == "jsonl":
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out = {"rows": len(rows), "columns": list(rows[0].keys()) if rows else []}
    elif fmt == "csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        out = {"rows": len(rows), "columns": list(rows[0].keys()) if rows else []}
    else:
        raise SystemExit(f"unknown format {fmt}")
    first = rows[0] if rows else None
    out["first"] = {k: (str(v) if v is not None else None) for k, v in first.items()} if first else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
