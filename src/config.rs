//! Command line, environment (`TALO_<FLAG>`) and TOML file (`--config`) settings.
//!
//! Precedence: flag > environment > config file > default. The config file's top-level
//! keys are the flag names (`data-dir = "/var/lib/talo"`, `data_dir` works too); they are
//! applied by filling the matching `TALO_*` environment variables that are not set.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "talo",
    version,
    about = "IoT time-series ingestion and storage engine"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Run a SQL query against a talo server and print the result.
    Query(crate::client::QueryArgs),
    /// Send line protocol from a file (or `-` for standard input) to a talo server.
    Write(crate::client::WriteArgs),
    /// Exit 0 when a local talo server answers /ready (or /health with --live), 1 otherwise:
    /// the container healthcheck, without curl in the image.
    Ready(crate::client::ReadyArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum WalSyncArg {
    /// fsync every WAL group before acknowledging (durable against power loss).
    Fsync,
    /// Never fsync: survives a crash of talo, but an OS crash or power loss can lose
    /// the writes of the last ~30 s (the kernel's write-back delay).
    None,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (top-level keys are flag names).
    #[arg(long, env = "TALO_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// WAL, segments, manifest and catalog.
    #[arg(long, env = "TALO_DATA_DIR", default_value = "./talo-data")]
    pub(crate) data_dir: PathBuf,

    /// HTTP API address (port 0 picks a free port; the bound address is logged).
    #[arg(long, env = "TALO_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub(crate) http_addr: String,

    /// WAL durability.
    #[arg(long, env = "TALO_WAL_SYNC", value_enum, default_value = "fsync")]
    pub(crate) wal_sync: WalSyncArg,

    /// Extra time the WAL writer waits to gather a group after the first write.
    #[arg(long, env = "TALO_WAL_GROUP_WINDOW", value_parser = humantime::parse_duration, default_value = "1ms")]
    pub(crate) wal_group_window: Duration,

    /// Flush the buffer to Parquet when its oldest row is this old.
    #[arg(long, env = "TALO_FLUSH_INTERVAL", value_parser = humantime::parse_duration, default_value = "10m")]
    pub(crate) flush_interval: Duration,

    /// Flush the buffer when it holds this many MiB.
    #[arg(long, env = "TALO_FLUSH_SIZE_MB", default_value_t = 16)]
    pub(crate) flush_size_mb: usize,

    /// Writers wait while the buffer holds more than this many MiB.
    #[arg(long, env = "TALO_MAX_BUFFER_MB", default_value_t = 128)]
    pub(crate) max_buffer_mb: usize,

    /// Time partition of segments.
    #[arg(long, env = "TALO_PARTITION", value_parser = humantime::parse_duration, default_value = "1d")]
    pub(crate) partition: Duration,

    /// How often to look for small segments to merge (a flush also triggers a look);
    /// `off` disables compaction.
    #[arg(long, env = "TALO_COMPACTION_INTERVAL", value_parser = parse_interval_or_off, default_value = "60s")]
    pub(crate) compaction_interval: MaybeInterval,

    /// Merge a partition's run of small segments once it has this many files.
    #[arg(long, env = "TALO_COMPACTION_MIN_FILES", default_value_t = 8)]
    pub(crate) compaction_min_files: usize,

    /// A partition that got no flush for this long merges any run of two or more
    /// small segments (the last flushes of a finished day); `off`: only runs of
    /// `--compaction-min-files`.
    #[arg(long, env = "TALO_COMPACTION_COLD_AFTER", value_parser = parse_interval_or_off, default_value = "1h")]
    pub(crate) compaction_cold_after: MaybeInterval,

    /// Segments at least this large (MiB) are not merged further.
    #[arg(long, env = "TALO_COMPACTION_TARGET_MB", default_value_t = 256)]
    pub(crate) compaction_target_mb: u64,

    /// Most rows in one merged segment (the merge streams; memory does not grow with it).
    #[arg(long, env = "TALO_COMPACTION_MAX_ROWS", default_value_t = 8 << 20)]
    pub(crate) compaction_max_rows: u64,

    /// zstd level of flushed segments (1..=22): higher is smaller and slower to write.
    #[arg(long, env = "TALO_SEGMENT_ZSTD_LEVEL", default_value_t = 3)]
    pub(crate) segment_zstd_level: i32,

    /// Most rows in one Parquet data page of a segment. Smaller pages let time and tag
    /// filters skip more of a file (page index); larger pages compress a little better.
    #[arg(long, env = "TALO_SEGMENT_PAGE_ROWS", default_value_t = talo_engine::segment::SegmentOptions::default().page_rows)]
    pub(crate) segment_page_rows: usize,

    /// Store float fields whose values are all short decimals (at most 6 places, below
    /// 10^9: what sensors report) as scaled integers, Parquet DECIMAL on INT64 with delta
    /// encoding: lossless (every value reads back bit for bit, or the column stays a
    /// double), and less than half the bytes of a dictionary-encoded double. `false`
    /// writes every float field as a Parquet DOUBLE.
    #[arg(long, env = "TALO_SEGMENT_DECIMAL_FLOATS", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) segment_decimal_floats: bool,

    /// Store integer fields (and decimal-stored floats) in 32 bits in a segment whose
    /// values all fit (Parquet INT32, DECIMAL on INT32): the same values, read back as
    /// the table's 64-bit types, and tighter delta packing (lux -12 % on the benchmark).
    /// `false` keeps them 64-bit.
    #[arg(long, env = "TALO_SEGMENT_NARROW_INTEGERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) segment_narrow_integers: bool,

    /// zstd level of merged segments (1..=22); merges run in the background, so they
    /// may compress harder than flushes.
    #[arg(long, env = "TALO_COMPACTION_ZSTD_LEVEL", default_value_t = 7)]
    pub(crate) compaction_zstd_level: i32,

    /// Largest accepted HTTP request body in MiB (after gzip decoding).
    #[arg(long, env = "TALO_MAX_BODY_MB", default_value_t = 64)]
    pub(crate) max_body_mb: usize,

    /// Embedded MQTT endpoint for devices [default: 127.0.0.1:1883]; `off` disables it,
    /// port 0 picks a free port. If the default port is taken (a broker already runs
    /// there), talo starts without the endpoint and says so; an address given explicitly
    /// must bind.
    #[arg(long, env = "TALO_MQTT_LISTEN")]
    pub(crate) mqtt_listen: Option<String>,

    /// Largest MQTT packet (KiB) the embedded endpoint reads into memory; larger
    /// publishes are discarded as they stream in, acknowledged and recorded in `_rejected`.
    #[arg(long, env = "TALO_MQTT_MAX_PACKET_KB", default_value_t = 1024)]
    pub(crate) mqtt_max_packet_kb: usize,

    /// Concurrent connections on the embedded MQTT endpoint; more are refused.
    #[arg(long, env = "TALO_MQTT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub(crate) mqtt_max_connections: usize,

    /// External MQTT broker to subscribe to, e.g. `mqtt://user:pass@host:1883`.
    #[arg(long, env = "TALO_MQTT_URL")]
    pub(crate) mqtt_url: Option<String>,

    /// PEM file of the CA that signed the broker's certificate, for `mqtts://` URLs
    /// (default: the system's trusted roots).
    #[arg(long, env = "TALO_MQTT_CA_FILE")]
    pub(crate) mqtt_ca_file: Option<PathBuf>,

    /// MQTT version spoken to the external broker: `3.1.1` (or `4`) or `5`.
    #[arg(long, env = "TALO_MQTT_PROTOCOL", default_value = "3.1.1", value_parser = ["3.1.1", "4", "5"])]
    pub(crate) mqtt_protocol: String,

    /// Client id of talo's persistent MQTT session (keep it fixed across restarts).
    #[arg(long, env = "TALO_MQTT_CLIENT_ID", default_value = "talo")]
    pub(crate) mqtt_client_id: String,

    /// Memory one query may use (MiB) for sorts, joins and aggregations.
    #[arg(long, env = "TALO_QUERY_MEMORY_MB", default_value_t = 512)]
    pub(crate) query_memory_mb: usize,

    /// Longest a query may run.
    #[arg(long, env = "TALO_QUERY_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub(crate) query_timeout: Duration,

    /// Queries running at once; more are answered 429.
    #[arg(long, env = "TALO_QUERY_CONCURRENCY", default_value_t = 8)]
    pub(crate) query_concurrency: usize,

    /// Threads of the query runtime (separate from ingestion); 0 = number of CPUs.
    #[arg(long, env = "TALO_QUERY_THREADS", default_value_t = 0)]
    pub(crate) query_threads: usize,

    /// Optimized plans of repeated SQL kept for reuse (dashboards); 0 turns the cache off.
    #[arg(long, env = "TALO_QUERY_PLAN_CACHE", default_value_t = 256)]
    pub(crate) query_plan_cache: usize,

    /// How often rollups (`[[databases.<db>.rollups]]`) catch up with new writes.
    #[arg(long, env = "TALO_ROLLUP_INTERVAL", value_parser = humantime::parse_duration, default_value = "1s")]
    pub(crate) rollup_interval: Duration,

    /// Maximum time to finish in-flight work and flush on SIGTERM before exiting.
    #[arg(long, env = "TALO_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub(crate) shutdown_timeout: Duration,
}

impl ServeArgs {
    pub(crate) fn query_config(&self) -> talo_query::QueryConfig {
        let mut q = talo_query::QueryConfig {
            memory_limit_bytes: self.query_memory_mb << 20,
            timeout: self.query_timeout,
            max_concurrent: self.query_concurrency,
            plan_cache_entries: self.query_plan_cache,
            ..Default::default()
        };
        if self.query_threads > 0 {
            q.threads = self.query_threads;
        }
        q
    }

    pub(crate) fn engine_config(&self) -> talo_engine::EngineConfig {
        talo_engine::EngineConfig {
            data_dir: self.data_dir.clone(),
            wal_sync: match self.wal_sync {
                WalSyncArg::Fsync => talo_engine::WalSync::Fsync,
                WalSyncArg::None => talo_engine::WalSync::None,
            },
            group_commit_window: self.wal_group_window,
            flush_interval: self.flush_interval,
            flush_bytes: self.flush_size_mb << 20,
            max_buffer_bytes: self.max_buffer_mb << 20,
            partition: self.partition,
            compaction: talo_engine::CompactionConfig {
                interval: self.compaction_interval.0,
                min_files: self.compaction_min_files,
                target_bytes: self.compaction_target_mb << 20,
                max_rows: self.compaction_max_rows,
                zstd_level: self.compaction_zstd_level,
                cold_after: self.compaction_cold_after.0,
            },
            segment: talo_engine::segment::SegmentOptions {
                zstd_level: self.segment_zstd_level,
                page_rows: self.segment_page_rows,
                decimal_floats: self.segment_decimal_floats,
                narrow_integers: self.segment_narrow_integers,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// A duration, or none (`off`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaybeInterval(pub(crate) Option<Duration>);

fn parse_interval_or_off(s: &str) -> Result<MaybeInterval, String> {
    if s == "off" {
        return Ok(MaybeInterval(None));
    }
    humantime::parse_duration(s)
        .map(|d| MaybeInterval(Some(d)))
        .map_err(|e| e.to_string())
}

/// Find `--config FILE` (or `TALO_CONFIG`) and export its top-level scalar keys as
/// `TALO_<KEY>` variables that are not already set. Tables (routes, tokens, ...) are
/// read by the components that own them.
pub(crate) fn apply_config_file_to_env() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut path = std::env::var("TALO_CONFIG").ok();
    for (i, a) in args.iter().enumerate() {
        if a == "--config" {
            path = args.get(i + 1).cloned();
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        }
    }
    let Some(path) = path else { return Ok(()) };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading config file {path}"))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing config file {path}"))?;
    let known = known_keys();
    for (key, value) in table {
        let v = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Table(_) | toml::Value::Array(_) => {
                if !SECTIONS.contains(&key.as_str()) {
                    bail!("config file {path}: unknown section {key:?}");
                }
                continue;
            }
            toml::Value::Datetime(d) => d.to_string(),
        };
        let var = format!("TALO_{}", key.to_ascii_uppercase().replace('-', "_"));
        if !known.contains(&var) {
            bail!("config file {path}: unknown key {key:?}");
        }
        if std::env::var_os(&var).is_none() {
            // SAFETY: called at the very start of `main`, before any other thread exists.
            unsafe { std::env::set_var(&var, v) };
        }
    }
    Ok(())
}

/// The sections of the config file that are not flags.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct FileSections {
    #[serde(default)]
    pub(crate) tokens: Vec<talo_query::TokenConfig>,
    #[serde(default)]
    pub(crate) mqtt: MqttSection,
    /// `[databases.<db>]`: retention, `[databases.<db>.tables.<t>]`: overrides.
    #[serde(default)]
    pub(crate) databases: std::collections::BTreeMap<String, DatabaseSection>,
}

/// `[databases.<db>]` of the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatabaseSection {
    #[serde(default, with = "humantime_serde_opt")]
    pub(crate) retention: Option<Duration>,
    #[serde(default)]
    pub(crate) tables: std::collections::BTreeMap<String, TableSection>,
    /// `[[databases.<db>.rollups]]`
    #[serde(default)]
    pub(crate) rollups: Vec<RollupSection>,
}

/// `[[databases.<db>.rollups]]` of the config file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollupSection {
    pub(crate) source: String,
    pub(crate) table: String,
    pub(crate) interval: String,
    pub(crate) aggregates: Vec<String>,
}

impl FileSections {
    /// The rollup rules of every database, checked.
    pub(crate) fn rollup_rules(&self) -> anyhow::Result<Vec<talo_query::rollup::RollupRule>> {
        let mut rules = Vec::new();
        for (db, d) in &self.databases {
            for r in &d.rollups {
                let what = format!("[[databases.{db}.rollups]] table {:?}", r.table);
                let interval = humantime::parse_duration(&r.interval)
                    .with_context(|| format!("{what}: interval"))?;
                let aggregates = r
                    .aggregates
                    .iter()
                    .map(|a| talo_query::rollup::Aggregate::parse(a))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
                rules.push(talo_query::rollup::RollupRule {
                    db: db.clone(),
                    source: r.source.clone(),
                    table: r.table.clone(),
                    interval,
                    aggregates,
                });
            }
        }
        for r in &rules {
            r.validate(&rules).map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok(rules)
    }
}

/// `[databases.<db>.tables.<t>]` of the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TableSection {
    #[serde(default, with = "humantime_serde_opt")]
    pub(crate) retention: Option<Duration>,
}

/// `"30d"`-style durations in the config file.
mod humantime_serde_opt {
    use serde::Deserialize;
    use std::time::Duration;

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// `[mqtt]` of the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MqttSection {
    #[serde(default)]
    pub(crate) routes: Vec<talo_ingest::routes::RouteConfig>,
}

/// Read the non-flag sections (`[[tokens]]`, ...) of the config file, if there is one.
pub(crate) fn load_sections(path: Option<&std::path::Path>) -> anyhow::Result<FileSections> {
    let Some(path) = path else {
        return Ok(FileSections::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// Section names allowed at the top level of the config file besides flag keys.
const SECTIONS: &[&str] = &["tokens", "mqtt", "databases"];

/// The variables a config-file key may set: the `env` of every flag of `talo serve`
/// (all of them, so that a new flag is settable from the file without a list to keep).
fn known_keys() -> Vec<String> {
    ServeArgs::augment_args(clap::Command::new("serve"))
        .get_arguments()
        .filter_map(|a| a.get_env())
        .filter(|e| *e != "TALO_CONFIG")
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}
