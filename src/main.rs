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
        config::Command::Serve(args) => serve::run(*args),
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
