//! `talo query` and `talo write`: small HTTP clients of a running server.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct Conn {
    /// Server URL.
    #[arg(long, env = "TALO_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Token (sent as `Authorization: Bearer`).
    #[arg(long, env = "TALO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Database.
    #[arg(long, env = "TALO_DB", default_value = "default")]
    db: String,
}

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The SQL statement.
    sql: String,
    /// Output: `table` (default, aligned text), or json, jsonl, csv, arrow, parquet
    /// (raw bytes as the server sends them).
    #[arg(long, default_value = "table")]
    format: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Args)]
pub(crate) struct WriteArgs {
    /// Line-protocol file, or `-` for standard input.
    file: String,
    /// Timestamp precision: ns, us, ms, s.
    #[arg(long, default_value = "ns")]
    precision: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Args)]
pub(crate) struct ReadyArgs {
    /// Server URL. Default: the server's own `--http-addr` (`TALO_HTTP_ADDR`, an unspecified
    /// host such as 0.0.0.0 asked on loopback), else http://127.0.0.1:8080.
    #[arg(long, env = "TALO_URL")]
    url: Option<String>,
    /// Ask /health (the process answers) instead of /ready (WAL replayed, listeners up).
    #[arg(long)]
    live: bool,
    /// Give up after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    timeout: Duration,
}

/// The URL a local probe uses for a server listening on `addr` (`host:port`).
fn local_url(addr: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "8080"));
    let host = match host {
        "" | "0.0.0.0" | "[::]" | "::" => "127.0.0.1",
        h => h,
    };
    format!("http://{host}:{port}")
}

pub(crate) fn ready(a: ReadyArgs) -> anyhow::Result<()> {
    let base = a.url.unwrap_or_else(|| {
        std::env::var("TALO_HTTP_ADDR")
            .map(|addr| local_url(&addr))
            .unwrap_or_else(|_| "http://127.0.0.1:8080".into())
    });
    let path = if a.live { "health" } else { "ready" };
    let url = format!("{}/{path}", base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(a.timeout))
        .build()
        .into();
    let mut resp = agent
        .get(&url)
        .call()
        .with_context(|| format!("connecting to {url}"))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let body = resp.body_mut().read_to_vec().unwrap_or_default();
        bail!("{url}: {}", error_text(status, &body));
    }
    Ok(())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

fn error_text(status: u16, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
        + &format!(" (HTTP {status})")
}

pub(crate) fn query(a: QueryArgs) -> anyhow::Result<()> {
    let wire = if a.format == "table" {
        "arrow"
    } else {
        a.format.as_str()
    };
    let url = format!("{}/api/v1/query", a.conn.url.trim_end_matches('/'));
    let mut req = agent()
        .get(&url)
        .query("db", &a.conn.db)
        .query("format", wire)
        .query("sql", &a.sql);
    if let Some(t) = &a.conn.token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req
        .call()
        .with_context(|| format!("connecting to {}", a.conn.url))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .context("reading the answer")?;
    if status != 200 {
        bail!("{}", error_text(status, &body));
    }
    if a.format != "table" {
        std::io::stdout().write_all(&body)?;
        return Ok(());
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    eprintln!("{rows} row(s)");
    Ok(())
}

pub(crate) fn write(a: WriteArgs) -> anyhow::Result<()> {
    let mut body = Vec::new();
    if a.file == "-" {
        std::io::stdin().read_to_end(&mut body)?;
    } else {
        body = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file))?;
    }
    let url = format!("{}/api/v1/write", a.conn.url.trim_end_matches('/'));
    let mut req = agent()
        .post(&url)
        .query("db", &a.conn.db)
        .query("precision", &a.precision);
    if let Some(t) = &a.conn.token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req
        .send(&body[..])
        .with_context(|| format!("connecting to {}", a.conn.url))?;
    let status = resp.status().as_u16();
    let answer = resp.body_mut().read_to_vec().unwrap_or_default();
    match status {
        204 => {
            eprintln!("written");
            Ok(())
        }
        400 => {
            let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            if let Some(rej) = v.get("rejected").and_then(|r| r.as_array()) {
                for r in rej {
                    eprintln!("line {}: {}", r["line"], r["reason"].as_str().unwrap_or(""));
                }
            }
            bail!("{}", error_text(status, &answer))
        }
        _ => bail!("{}", error_text(status, &answer)),
    }
}

#[cfg(test)]
mod tests {
    use super::local_url;

    #[test]
    fn probe_url_asks_loopback_for_unspecified_hosts() {
        assert_eq!(local_url("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(local_url("[::]:9000"), "http://127.0.0.1:9000");
        assert_eq!(local_url("10.0.0.5:80"), "http://10.0.0.5:80");
        assert_eq!(local_url(":8081"), "http://127.0.0.1:8081");
    }
}
