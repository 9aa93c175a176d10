//! Workload generator and HTTP line-protocol loader of the end-to-end benchmark suite
//! (`benches/compare.sh` drives it).
//!
//! ```text
//! cargo bench --bench loadgen -- gen  [--shape building|tsbs] [--format lp|json|senml]
//!                                     [--sensors 1000] [--steps 360] [--seed 1]
//! cargo bench --bench loadgen -- http --url 'http://127.0.0.1:8080/write?db=bench'
//!                                     [--shape building|tsbs] [--sensors 1000] [--steps 360]
//!                                     [--batch 5000] [--connections 4] [--seed 1] [--sink]
//!                                     [--stream] [--skip-steps 0]
//! ```
//! `gen` prints the data: line protocol, or `topic<TAB>payload` per MQTT message for
//! json/senml. Same seed, same bytes.
//!
//! `http` builds every request body before the clock starts (`--batch` lines each, in
//! time order), then posts them over `--connections` keep-alive connections and prints one
//! JSON line: rows, seconds, rows/s, field values/s. Any non-2xx answer fails the run.
//! `--skip-steps N` starts at step N (the same values as a run that loaded 0..N first).
//! `--stream` generates the bodies while loading instead (one generator thread, a
//! bounded queue), for data sets too large to hold in memory; the generator may then be
//! what limits the rate, so use it where the rate is not the measurement.
//! `--sink` posts to a built-in endpoint that reads each body and answers 204 without
//! looking at it: the loader's own ceiling, to check that it is not what limits a system.

#[path = "workload.rs"]
mod workload;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use workload::{CPU_FIELDS, CpuWorkload, FIELDS_PER_ROW, Workload};

#[derive(Debug, Clone)]
struct Args {
    cmd: String,
    shape: String,
    format: String,
    sensors: usize,
    steps: usize,
    seed: u64,
    url: String,
    batch: usize,
    connections: usize,
    sink: bool,
    stream: bool,
    skip_steps: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        cmd: String::new(),
        shape: "building".into(),
        format: "lp".into(),
        sensors: 1000,
        steps: 360,
        seed: 1,
        url: "http://127.0.0.1:8080/write?db=bench".into(),
        batch: 5000,
        connections: 4,
        sink: false,
        stream: false,
        skip_steps: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "gen" | "http" => a.cmd = k.clone(),
            "--shape" => a.shape = v(),
            "--format" => a.format = v(),
            "--sensors" => a.sensors = v().parse().expect("--sensors"),
            "--steps" => a.steps = v().parse().expect("--steps"),
            "--seed" => a.seed = v().parse().expect("--seed"),
            "--url" => a.url = v(),
            "--batch" => a.batch = v().parse().expect("--batch"),
            "--connections" => a.connections = v().parse().expect("--connections"),
            "--sink" => a.sink = true,
            "--stream" => a.stream = true,
            "--skip-steps" => a.skip_steps = v().parse().expect("--skip-steps"),
            "--bench" => {} // cargo bench passes this to harness = false targets
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        a.shape == "building" || a.shape == "tsbs",
        "--shape building|tsbs"
    );
    a
}

/// The generator of one shape, one step (every sensor or host once) at a time.
enum Gen {
    Building(Workload),
    Tsbs(CpuWorkload),
}

impl Gen {
    fn new(a: &Args) -> Self {
        match a.shape.as_str() {
            "tsbs" => Gen::Tsbs(CpuWorkload::new(a.sensors, a.seed)),
            _ => Gen::Building(Workload::new(a.sensors, a.seed)),
        }
    }
    fn fields_per_row(&self) -> usize {
        match self {
            Gen::Building(_) => FIELDS_PER_ROW,
            Gen::Tsbs(_) => CPU_FIELDS.len(),
        }
    }
    /// Advance one step without output.
    fn skip(&mut self) {
        match self {
            Gen::Building(w) => {
                w.tick();
            }
            Gen::Tsbs(w) => {
                w.line_protocol();
            }
        }
    }
    fn line_protocol(&mut self) -> String {
        match self {
            Gen::Building(w) => w.line_protocol(),
            Gen::Tsbs(w) => w.line_protocol(),
        }
    }
}

fn generate(a: &Args) {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut g = Gen::new(a);
    for _ in 0..a.steps {
        let text = match (&mut g, a.format.as_str()) {
            (g, "lp") => g.line_protocol(),
            (Gen::Building(w), "json" | "senml") => {
                let msgs = if a.format == "json" {
                    w.json_messages()
                } else {
                    w.senml_messages()
                };
                msgs.into_iter()
                    .map(|(t, p)| format!("{t}\t{p}\n"))
                    .collect()
            }
            _ => panic!("--format {} needs --shape building (lp for tsbs)", a.format),
        };
        if out.write_all(text.as_bytes()).is_err() {
            return; // reader went away (e.g. `| head`)
        }
    }
}

/// Request bodies of `batch` lines each, in time order, handed to `out`; returns the
/// rows and the fields per row.
fn for_each_body(a: &Args, mut out: impl FnMut(Vec<u8>)) -> (usize, usize) {
    let mut g = Gen::new(a);
    let mut cur = Vec::with_capacity(a.batch * 256);
    let (mut lines, mut rows) = (0, 0);
    for _ in 0..a.skip_steps.min(a.steps) {
        g.skip();
    }
    for _ in a.skip_steps.min(a.steps)..a.steps {
        for line in g.line_protocol().split_inclusive('\n') {
            cur.extend_from_slice(line.as_bytes());
            lines += 1;
            rows += 1;
            if lines == a.batch {
                out(std::mem::replace(
                    &mut cur,
                    Vec::with_capacity(a.batch * 256),
                ));
                lines = 0;
            }
        }
    }
    if !cur.is_empty() {
        out(cur);
    }
    (rows, g.fields_per_row())
}

/// A minimal HTTP/1.1 endpoint that reads every request body and answers 204.
fn sink() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = serve_sink(conn);
            });
        }
    });
    format!("http://{addr}/write?db=bench")
}

fn serve_sink(conn: TcpStream) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::with_capacity(1 << 20, conn);
    let mut body = Vec::new();
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        w.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?;
    }
}

fn post_all(
    url: &str,
    next: impl Fn() -> Option<Arc<Vec<u8>>> + Send + Sync + 'static,
    connections: usize,
) {
    let next = Arc::new(next);
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (next, url) = (Arc::clone(&next), url.to_string());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(600)))
                    .build()
                    .into();
                while let Some(b) = next() {
                    let mut resp = agent
                        .post(&url)
                        .header("Content-Type", "text/plain; charset=utf-8")
                        .send(&b[..])
                        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
                    let status = resp.status().as_u16();
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    assert!(
                        (200..300).contains(&status),
                        "POST {url}: HTTP {status}: {text}"
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("loader thread failed");
    }
}

fn load(a: &Args) {
    let url = if a.sink { sink() } else { a.url.clone() };
    let (rows, fields, bytes, n_bodies, secs);
    if a.stream {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(64);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let bytes_sent = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&bytes_sent);
        let gen_args = a.clone();
        let start = Instant::now();
        let generator = std::thread::spawn(move || {
            let mut n = 0;
            let (rows, fields) = for_each_body(&gen_args, |b| {
                counted.fetch_add(b.len(), Ordering::Relaxed);
                n += 1;
                let _ = tx.send(Arc::new(b));
            });
            (rows, fields, n)
        });
        post_all(&url, move || rx.lock().ok()?.recv().ok(), a.connections);
        secs = start.elapsed().as_secs_f64();
        let (r, f, n) = generator.join().expect("generator failed");
        (rows, fields, n_bodies) = (r, f, n);
        bytes = bytes_sent.load(Ordering::Relaxed);
    } else {
        let t0 = Instant::now();
        let mut bodies = Vec::new();
        let (r, f) = for_each_body(a, |b| bodies.push(Arc::new(b)));
        (rows, fields, n_bodies) = (r, f, bodies.len());
        bytes = bodies.iter().map(|b| b.len()).sum();
        eprintln!(
            "built {n_bodies} bodies ({rows} rows, {:.1} MB) in {:.1} s",
            bytes as f64 / 1e6,
            t0.elapsed().as_secs_f64()
        );
        let bodies = Arc::new(bodies);
        let next = AtomicUsize::new(0);
        let start = Instant::now();
        post_all(
            &url,
            move || bodies.get(next.fetch_add(1, Ordering::Relaxed)).cloned(),
            a.connections,
        );
        secs = start.elapsed().as_secs_f64();
    }
    println!(
        r#"{{"rows":{rows},"seconds":{secs:.3},"rows_per_s":{:.0},"field_values_per_s":{:.0},"bodies":{n_bodies},"mb":{:.1},"connections":{},"batch":{},"streamed":{}}}"#,
        rows as f64 / secs,
        (rows * fields) as f64 / secs,
        bytes as f64 / 1e6,
        a.connections,
        a.batch,
        a.stream
    );
}

fn main() {
    let a = parse_args();
    match a.cmd.as_str() {
        "gen" => generate(&a),
        "http" => load(&a),
        _ => {
            eprintln!("usage: loadgen gen|http [options] (see the top of benches/loadgen.rs)");
            std::process::exit(2);
        }
    }
}
