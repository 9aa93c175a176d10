//! Containers: the image (`docker/Dockerfile`), the compose stack (`docker/compose.yaml`:
//! Mosquitto + talo on named volumes) and the swarm stack's rolling update
//! (`docker/stack.yaml`), driven through the real `docker` / `docker-compose` CLIs with a real
//! MQTT device (paho) and HTTP queries.
//!
//! They need a Docker engine. Without one each test prints `SKIPPED` and passes, unless
//! `TALO_REQUIRE_DOCKER=1` (`.ci/run` sets it: the CI machine has an engine), then it fails.
//! Images are built once per run: the base images by `docker/base-image.sh`, the broker from
//! `docker/mosquitto`, and the talo image by the Dockerfile's `prebuilt` target from the very
//! binary cargo built for this run. The self-contained multi-stage build is its own test.
//! The tests take turns (one lock): they share one engine and two cores.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use support::*;

const TALO_IMAGE: &str = "talo:test";
const MOSQUITTO_IMAGE: &str = "talo-mosquitto:local";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run `cmd`; panic with its output unless it succeeds; its stdout, trimmed.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker(args: &[&str]) -> String {
    run(Command::new("docker").args(args))
}

/// `docker-compose` (v1, Debian's) or else `docker compose` (v2 plugin).
fn compose_command() -> Command {
    static V1: OnceLock<bool> = OnceLock::new();
    let v1 = *V1.get_or_init(|| {
        Command::new("docker-compose")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if v1 {
        Command::new("docker-compose")
    } else {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    }
}

/// Take the docker lock and make sure the images exist; `None` (test skipped) without an
/// engine, unless one is required.
fn docker_session(test: &str) -> Option<MutexGuard<'static, ()>> {
    static LOCK: Mutex<()> = Mutex::new(());
    let answers = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !answers {
        assert!(
            std::env::var("TALO_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "TALO_REQUIRE_DOCKER=1 but no Docker engine answers `docker info`"
        );
        eprintln!("SKIPPED {test}: no Docker engine answers `docker info`");
        return None;
    }
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    build_images();
    Some(guard)
}

fn build_images() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        run(&mut Command::new(repo().join("docker/base-image.sh")));
        run(Command::new("docker")
            .args(["build", "-q", "-t", MOSQUITTO_IMAGE])
            .arg(repo().join("docker/mosquitto")));
        // the Dockerfile's offline target, from the binary under test (debug info stripped:
        // the context shrinks from ~1 GB to tens of MB)
        let ctx = tempfile::tempdir().unwrap();
        let dist = ctx.path().join("docker/dist");
        std::fs::create_dir_all(&dist).unwrap();
        run(Command::new("objcopy")
            .arg("--strip-debug")
            .arg(BIN)
            .arg(dist.join("talo")));
        run(Command::new("docker")
            .args([
                "build", "-q", "--target", "prebuilt", "-t", TALO_IMAGE, "-f",
            ])
            .arg(repo().join("docker/Dockerfile"))
            .arg(ctx.path()));
    });
}

fn inspect(container: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, container])
}

fn wait_ready_at(base: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !matches!(get(&format!("{base}/ready")), Ok((200, _))) {
        assert!(
            Instant::now() < deadline,
            "{base}/ready not 200 within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Poll `probe` every 50 ms until it returns `Some` (panics after `limit`).
fn poll<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stored(base: &str, sql: &str) -> Option<i64> {
    count_at(base, "house", sql)
}

/// Sequence number of the probe message (outside the devices' ranges).
const PROBE_SEQ: u64 = 1_000_000;

/// Every published message is stored once: `n` rows, `n` distinct sequence numbers.
fn wait_stored(base: &str, n: i64) {
    let limit = Duration::from_secs(180);
    let rows = format!("SELECT count(*) AS n FROM env WHERE seq < {PROBE_SEQ}");
    wait_count_at(base, "house", &rows, n, limit);
    let distinct = format!("SELECT count(DISTINCT seq) AS n FROM env WHERE seq < {PROBE_SEQ}");
    wait_count_at(base, "house", &distinct, n, limit);
}

/// Wait until talo's subscription at the broker is in place: probe messages published until
/// one is stored. (Until a persistent session has subscribed once, the broker has nothing to
/// queue messages for: what devices publish before that is not talo's to lose.)
fn wait_subscribed(base: &str, mqtt_port: u16, tmp: &Path) {
    let port = mqtt_port.to_string();
    let sql = format!("SELECT count(*) AS n FROM env WHERE seq >= {PROBE_SEQ}");
    let deadline = Instant::now() + Duration::from_secs(180);
    for attempt in 0.. {
        let start = (PROBE_SEQ + attempt).to_string();
        let args = [
            "--port",
            &port,
            "--client-id",
            "probe",
            "--count",
            "1",
            "--start",
            &start,
        ];
        let summary = Publisher::start(tmp, &args).finish();
        assert_eq!(summary["acked"], 1, "{summary}");
        let again = Instant::now() + Duration::from_secs(2);
        while Instant::now() < again {
            if stored(base, &sql).is_some_and(|n| n > 0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            Instant::now() < deadline,
            "talo did not subscribe at the broker"
        );
    }
}

/// One `docker/compose.yaml` project on free host ports; `down -v` on drop.
struct Compose {
    project: String,
    http: u16,
    mqtt: u16,
}

impl Compose {
    fn up(name: &str) -> Compose {
        let c = Compose {
            project: format!("talotest{name}{}", std::process::id()),
            http: free_port(),
            mqtt: free_port(),
        };
        c.cmd(&["up", "-d", "--no-build"]);
        c
    }

    /// `docker-compose` for this project, its file and its ports.
    fn command(&self) -> Command {
        let mut c = compose_command();
        c.arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(repo().join("docker/compose.yaml"))
            .env("TALO_IMAGE", TALO_IMAGE)
            .env("TALO_HTTP_PORT", self.http.to_string())
            .env("MQTT_PORT", self.mqtt.to_string());
        c
    }

    fn cmd(&self, args: &[&str]) -> String {
        run(self.command().args(args))
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn container(&self, service: &str) -> String {
        self.cmd(&["ps", "-q", service])
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["down", "-v", "--remove-orphans", "-t", "5"])
            .output();
    }
}

#[test]
fn compose_stack_ingests_heals_after_sigkill_and_keeps_its_volumes() {
    let Some(_lock) = docker_session("compose stack") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let stack = Compose::up("compose");
    let base = stack.base();
    wait_ready_at(&base, Duration::from_secs(180));
    let talo = stack.container("talo");
    poll("talo container healthy", Duration::from_secs(120), || {
        (inspect(&talo, "{{.State.Health.Status}}") == "healthy").then_some(())
    });
    assert_eq!(
        docker(&["exec", &talo, "id", "-u"]),
        "10001",
        "talo runs as its own non-root user"
    );

    wait_subscribed(&base, stack.mqtt, tmp.path());

    // A device streams through the broker; talo is SIGKILLed a third of the way in.
    // (`docker kill` would not do: Docker counts it as a manual stop and the restart policy
    // ignores it; a crash or the OOM killer is a SIGKILL from outside, as here.)
    let mqtt = stack.mqtt.to_string();
    let device = [
        "--port",
        &mqtt,
        "--client-id",
        "device-compose",
        "--topics",
        "20",
    ];
    let mut publisher = Publisher::start(
        tmp.path(),
        &[&device[..], &["--count", "3000", "--rate", "300"]].concat(),
    );
    publisher.wait_acked(1000, Duration::from_secs(60));
    publisher.check();
    let restarts: u32 = inspect(&talo, "{{.RestartCount}}").parse().unwrap();
    let pid = inspect(&talo, "{{.State.Pid}}");
    run(Command::new("kill").args(["-9", &pid]));
    poll(
        "the restart policy restarts talo",
        Duration::from_secs(60),
        || {
            let now: u32 = inspect(&talo, "{{.RestartCount}}").parse().ok()?;
            (now > restarts).then_some(())
        },
    );
    wait_ready_at(&base, Duration::from_secs(120));
    let summary = publisher.finish();
    assert_eq!(summary["acked"], 3000, "{summary}");
    wait_stored(&base, 3000);

    // SIGTERM: talo finishes, flushes and exits 0 well within the grace period
    let t = Instant::now();
    stack.cmd(&["stop", "-t", "30", "talo"]);
    let stop_time = t.elapsed();
    assert_eq!(inspect(&talo, "{{.State.ExitCode}}"), "0");
    assert!(
        stop_time < Duration::from_secs(25),
        "stop took {stop_time:?}"
    );
    eprintln!("compose: talo stopped by SIGTERM in {stop_time:?} (exit 0)");

    // published while talo is down: the broker queues it for talo's persistent session
    let summary = Publisher::start(
        tmp.path(),
        &[&device[..], &["--count", "500", "--start", "3000"]].concat(),
    )
    .finish();
    assert_eq!(summary["acked"], 500, "{summary}");

    // down (containers and network removed, named volumes kept) and up again: the rows are
    // still there and the broker's backlog (on its own volume) drains into talo
    stack.cmd(&["down", "-t", "30"]);
    stack.cmd(&["up", "-d", "--no-build"]);
    let t = Instant::now();
    wait_ready_at(&base, Duration::from_secs(180));
    eprintln!("compose: ready {:?} after up", t.elapsed());
    wait_stored(&base, 3500);
}

/// Swarm mode for the test; leaves the swarm on drop if it joined it.
struct Swarm {
    joined: bool,
}

impl Swarm {
    fn ensure() -> Swarm {
        if docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]) == "active" {
            return Swarm { joined: false };
        }
        let init = Command::new("docker")
            .args(["swarm", "init"])
            .output()
            .unwrap();
        if !init.status.success() {
            // more than one address to choose from
            docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        }
        Swarm { joined: true }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.joined {
            let _ = Command::new("docker")
                .args(["swarm", "leave", "--force"])
                .output();
        }
    }
}

/// One `docker/stack.yaml` stack on free host ports; removed with its volumes on drop.
struct Stack {
    name: String,
    http: u16,
    mqtt: u16,
}

impl Stack {
    fn deploy(name: &str) -> Stack {
        let s = Stack {
            name: format!("talotest{name}{}", std::process::id()),
            http: free_port(),
            mqtt: free_port(),
        };
        run(Command::new("docker")
            .args(["stack", "deploy", "--resolve-image", "never", "-c"])
            .arg(repo().join("docker/stack.yaml"))
            .arg(&s.name)
            .env("TALO_IMAGE", TALO_IMAGE)
            .env("TALO_HTTP_PORT", s.http.to_string())
            .env("MQTT_PORT", s.mqtt.to_string()));
        s
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn service(&self, name: &str) -> String {
        format!("{}_{name}", self.name)
    }

    /// The running container of the service's task, if one runs.
    fn container(&self, service: &str) -> Option<String> {
        let ids = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!(
                "label=com.docker.swarm.service.name={}",
                self.service(service)
            ),
            "--filter",
            "status=running",
        ]);
        let mut ids = ids.lines();
        let first = ids.next().map(str::to_string);
        assert!(ids.next().is_none(), "more than one {service} task runs");
        first
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["stack", "rm", &self.name])
            .output();
        // volumes can go once the stack's containers are gone
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let left = Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label=com.docker.stack.namespace={}", self.name))
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default();
            if left.iter().all(u8::is_ascii_whitespace) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for v in ["talo-data", "mosquitto-data"] {
            let _ = Command::new("docker")
                .args(["volume", "rm", &format!("{}_{v}", self.name)])
                .output();
        }
    }
}

/// Queries every 100 ms until stopped; the longest time they kept failing.
struct QueryProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Duration, usize, usize)>,
}

impl QueryProbe {
    fn start(base: String) -> QueryProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut longest, mut ok, mut failed) = (Duration::ZERO, 0, 0);
            let mut failing_since: Option<Instant> = None;
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                if stored(&base, "SELECT count(*) AS n FROM env").is_some() {
                    ok += 1;
                    if let Some(since) = failing_since.take() {
                        longest = longest.max(since.elapsed());
                    }
                } else {
                    failed += 1;
                    failing_since.get_or_insert(t);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(since) = failing_since {
                longest = longest.max(since.elapsed());
            }
            (longest, ok, failed)
        });
        QueryProbe { stop, thread }
    }

    fn finish(self) -> (Duration, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn swarm_rolling_update_during_a_publish_stream_loses_nothing() {
    let Some(_lock) = docker_session("swarm rolling update") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let _swarm = Swarm::ensure();
    let stack = Stack::deploy("roll");
    let base = stack.base();
    wait_ready_at(&base, Duration::from_secs(180));
    wait_subscribed(&base, stack.mqtt, tmp.path());

    // self-healing under swarm: `docker kill` a task's container → the service starts another
    let first = poll("a running talo task", Duration::from_secs(60), || {
        stack.container("talo")
    });
    docker(&["kill", &first]);
    let second = poll("a replacement talo task", Duration::from_secs(120), || {
        stack.container("talo").filter(|c| *c != first)
    });
    wait_ready_at(&base, Duration::from_secs(120));

    // a steady device stream (~20 s) with the update in the middle of it
    let mqtt = stack.mqtt.to_string();
    let mut publisher = Publisher::start(
        tmp.path(),
        &[
            "--port",
            &mqtt,
            "--client-id",
            "device-swarm",
            "--topics",
            "20",
            "--count",
            "6000",
            "--rate",
            "300",
        ],
    );
    let probe = QueryProbe::start(base.clone());
    publisher.wait_acked(1500, Duration::from_secs(60));
    publisher.check();
    // "the new version": same bits, new tag, so the service spec changes and tasks roll
    docker(&["tag", TALO_IMAGE, "talo:test-next"]);
    let t = Instant::now();
    docker(&[
        "service",
        "update",
        "--detach=false",
        "--quiet",
        "--image",
        "talo:test-next",
        &stack.service("talo"),
    ]);
    let update_time = t.elapsed();
    let state = docker(&[
        "service",
        "inspect",
        "-f",
        "{{.UpdateStatus.State}}",
        &stack.service("talo"),
    ]);
    assert_eq!(
        state, "completed",
        "the update did not complete (rolled back?)"
    );
    let third = stack
        .container("talo")
        .expect("a talo task after the update");
    assert_ne!(third, second, "the update replaced the task");
    assert_eq!(inspect(&third, "{{.Config.Image}}"), "talo:test-next");

    let summary = publisher.finish();
    assert_eq!(summary["acked"], 6000, "{summary}");
    wait_stored(&base, 6000);
    let (outage, ok, failed) = probe.finish();
    eprintln!(
        "swarm rolling update: {update_time:?} for the update; queries failed for at most \
         {outage:?} ({failed} failed, {ok} answered)"
    );
    assert!(ok > 0);
    assert!(
        outage < Duration::from_secs(60),
        "queries failed for {outage:?}"
    );
    drop(tmp);
}

#[test]
fn self_contained_multistage_build_serves() {
    let Some(_lock) = docker_session("self-contained image build") else {
        return;
    };
    if std::env::var("TALO_SKIP_SELF_BUILD").as_deref() == Ok("1")
        && std::env::var("TALO_REQUIRE_DOCKER").as_deref() != Ok("1")
    {
        eprintln!("SKIPPED self-contained image build: TALO_SKIP_SELF_BUILD=1");
        return;
    }
    // dev profile by default: the same stages, minutes quicker than release on two cores
    let profile = std::env::var("TALO_SELF_BUILD_PROFILE").unwrap_or_else(|_| "dev".into());
    let t = Instant::now();
    run(Command::new("docker")
        .args(["build", "-q", "-t", "talo:selfbuilt", "-f"])
        .arg(repo().join("docker/Dockerfile"))
        .arg(format!("--build-arg=CARGO_PROFILE={profile}"))
        .arg(repo()));
    eprintln!(
        "self-contained build ({profile}): {:?}, image {} bytes",
        t.elapsed(),
        docker(&["image", "inspect", "-f", "{{.Size}}", "talo:selfbuilt"])
    );
    let port = free_port();
    let name = format!("talotest-selfbuilt-{}", std::process::id());
    let _cleanup = Cleanup(name.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        "talo:selfbuilt",
    ]);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready_at(&base, Duration::from_secs(120));
    let (status, body) = post(
        &format!("{base}/api/v1/write?db=house"),
        b"env,building=b1,room=r1 temperature=21.5,seq=1i 1764028800000000000\n",
    )
    .unwrap();
    assert_eq!(status, 204, "{body}");
    wait_count_at(
        &base,
        "house",
        "SELECT count(*) AS n FROM env WHERE temperature = 21.5",
        1,
        Duration::from_secs(30),
    );
    docker(&["stop", "-t", "30", &name]);
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "0");
}

/// Removes a container on drop.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .output();
    }
}
