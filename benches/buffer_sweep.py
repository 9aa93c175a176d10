"""Ingest rate and peak memory of talo against its buffer settings, on compare.py's data.

For each (flush size, max buffer) pair, alternating over --rounds: start talo with
TALO_FLUSH_SIZE_MB / TALO_MAX_BUFFER_MB, load the smart-building data over HTTP line
protocol (the compare loader), read the peak RSS (VmHWM) and stop. VictoriaMetrics is run
in the same rounds as the reference the RSS target is stated against. Prints a markdown
table of medians. A setting may carry extra environment for talo after `+`
(`16/128+MALLOC_ARENA_MAX=2+GLIBC_TUNABLES=...`), to compare allocator settings too.

Usage (after `cargo build --release --bin talo --bench loadgen`):
  .venv/bin/python benches/buffer_sweep.py --talo target/release/talo \\
      --loadgen target/release/deps/loadgen-<hash> [--settings 256/1024,64/256] [--rounds 2]
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import compare  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    compare.load_args(p, rounds=2)
    p.add_argument("--settings", default="256/1024,64/256,32/256,16/128",
                   help="flush MiB/max buffer MiB[/compaction interval, e.g. off][+ENV=value...], comma-separated")
    p.add_argument("--no-peer", action="store_true", help="skip VictoriaMetrics")
    args = p.parse_args()
    settings = [tuple(s.split("+")[0].split("/")) + tuple(s.split("+")[1:]) for s in args.settings.split(",")]
    work = tempfile.mkdtemp(prefix="talo-sweep-")
    rows = args.sensors * args.steps
    runs = [("talo", s) for s in settings] + ([] if args.no_peer else [("victoriametrics", None)])
    got = {r: {"rate": [], "rss": [], "segments": []} for r in runs}
    print(f"data: {args.sensors} sensors x {args.steps} steps = {rows} rows", flush=True)
    try:
        for rnd in range(args.rounds):
            for run in (runs if rnd % 2 == 0 else list(reversed(runs))):
                name, s = run
                extra = {}
                if name == "talo":
                    os.environ["TALO_FLUSH_SIZE_MB"], os.environ["TALO_MAX_BUFFER_MB"] = s[:2]
                    plain = [x for x in s[2:] if "=" not in x]
                    os.environ["TALO_COMPACTION_INTERVAL"] = plain[0] if plain else "60s"
                    extra = dict(x.split("=", 1) for x in s[2:] if "=" in x)
                    sys_ = compare.Talo(args, work)
                else:
                    sys_ = compare.Victoria(args, work)
                os.environ.update(extra)
                try:
                    sys_.start()
                finally:
                    for k in extra:
                        os.environ.pop(k, None)
                sys_.prepare()
                r = compare.loader(args, sys_.write_url(), args.steps)
                rss = compare.vm_hwm_kb(sys_.proc.pid) / 1024
                got[run]["rate"].append(r["rows_per_s"])
                got[run]["rss"].append(rss)
                sys_.stop()
                if name == "talo":
                    got[run]["segments"].append(len(sys_.parquet_files()))
                shutil.rmtree(sys_.dir, ignore_errors=True)
                label = name if s is None else f"talo {'/'.join(s)}"
                print(f"round {rnd + 1} {label}: {r['rows_per_s']:.0f} rows/s, peak RSS {rss:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for k in ("TALO_FLUSH_SIZE_MB", "TALO_MAX_BUFFER_MB", "TALO_COMPACTION_INTERVAL"):
            os.environ.pop(k, None)
    base = statistics.median(got[runs[0]]["rate"])
    print()
    print("| system | flush / max buffer MiB [/ compaction] | rows/s (median) | vs first | peak RSS MiB (max) | segments after SIGTERM |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        name, s = run
        rate = statistics.median(got[run]["rate"])
        setting = "" if s is None else " / ".join(s)
        segs = "" if not got[run]["segments"] else str(max(got[run]["segments"]))
        print(f"| {name} | {setting} | {rate:,.0f} | {rate / base:.2f} | {max(got[run]['rss']):.0f} | {segs} |")


if __name__ == "__main__":
    main()
