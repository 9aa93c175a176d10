"""Read talo's Parquet segments with readers we did not write (pyarrow and DuckDB).

usage: segments.py DATA_DIR DB TABLE
Prints JSON: files, rows per reader, the Arrow schema pyarrow sees, the list of `id`
values (if the table has an `id` column) and a few DuckDB aggregates.
"""
import json
import os
import sys

import duckdb
import pyarrow.parquet as pq


def main():
    data_dir, db, table = sys.argv[1:4]
    with open(os.path.join(data_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["format"] == "talo-manifest", manifest.get("format")
    segs = [s for s in manifest["segments"] if s["db"] == db and s["table"] == table]
    files = [os.path.join(data_dir, s["path"]) for s in segs]
    out = {"files": len(files), "manifest_rows": sum(s["rows"] for s in segs)}
    if not files:
        print(json.dumps(out))
        return
    tables = [pq.read_table(f) for f in files]
    out["pyarrow_rows"] = sum(t.num_rows for t in tables)
    out["schema"] = {f.name: str(f.type) for f in tables[0].schema}
    md = pq.ParquetFile(files[0]).metadata
    out["compression"] = md.row_group(0).column(0).compression
    out["has_page_index"] = md.row_group(0).column(0).has_offset_index
    ids = []
    for t in tables:
        if "id" in t.column_names:
            ids.extend(t.column("id").to_pylist())
    out["ids"] = ids
    con = duckdb.connect()
    rel = con.read_parquet(files, union_by_name=True)
    con.register("seg", rel)
    out["duckdb_rows"] = con.execute("select count(*) from seg").fetchone()[0]
    cols = [c for c in out["schema"] if c not in ("time",)]
    if "temp" in cols:
        # float(): a column stored as a Parquet DECIMAL sums to a Python Decimal
        out["duckdb_temp_sum"] = float(con.execute("select sum(temp) from seg").fetchone()[0])
        out["pyarrow_temps"] = sorted(
            float(x) for t in tables if "temp" in t.column_names
            for x in t.column("temp").to_pylist() if x is not None
        )
    out["duckdb_min_time"] = str(con.execute("select min(time) from seg").fetchone()[0])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
