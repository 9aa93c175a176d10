//! The `talo` binary: configuration, runtimes, wiring and graceful shutdown.

mod client;
mod config;
mod serve;

use clap::Parser;

fn main() -> std::process::ExitCode {
    if let Err(e) = config::apply_config_file_to_env() {
        eprintln!("talo: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let cli = config::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let res = match cli.command {
        config::Command::Serve(args) => {
            limit_malloc_arenas();
            serve::run(*args)
        }
        config::Command::Query(args) => client::query(args),
        config::Command::Write(args) => client::write(args),
        config::Command::Ready(args) => client::ready(args),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("talo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Cap glibc's malloc arenas at two per core before the server starts its threads.
/// glibc gives each thread that meets a locked arena a new one, up to 8 per core, and
/// memory freed into one arena is not reused by threads of another: with ingest, flushes
/// and compaction on different threads that held 15–25 MiB more at peak for no speed.
/// Two per core kept the queries as fast as glibc's default; one per core cost the
/// day-long aggregates 10–20 % (their partitions' threads contend for the locks).
/// `benches/README.md` has the runs. `MALLOC_ARENA_MAX` in the environment (read by
/// glibc itself) wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = i32::try_from(2 * cores).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets an allocator parameter; called before any thread
        // of the server exists
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } != 1 {
            tracing::warn!("could not limit malloc arenas to {arenas}");
        }
    }
}
