//! `talo serve`: start the HTTP listener at once (liveness), recover the engine
//! (readiness), serve, and on SIGTERM/SIGINT stop accepting, drain, flush and exit.

use std::sync::Arc;

use anyhow::Context;
use talo_engine::Engine;
use talo_query::{AppState, HttpConfig};
use tokio_util::sync::CancellationToken;

use crate::config::ServeArgs;
use talo_ingest::metrics::{MqttMetrics, Source};

/// MQTT logins checked against the HTTP tokens: the password is the token, its write
/// permission decides which databases the device may publish to.
struct TokenLogin(talo_query::Auth);

impl talo_ingest::listener::Authenticator for TokenLogin {
    fn login(&self, _username: &str, password: &str) -> Option<talo_ingest::listener::Grant> {
        let p = self.0.principal_for_secret(password)?;
        let (all_databases, databases) = p.writable()?;
        Some(talo_ingest::listener::Grant {
            all_databases,
            databases,
        })
    }
}

/// Where the embedded MQTT endpoint listens unless told otherwise.
const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let engine_config = args.engine_config();
    // the engine's error already reads "invalid configuration: …"
    engine_config.validate()?;
    let sections = crate::config::load_sections(args.config.as_deref())?;
    // the query runtime before any other thread: its workers take malloc arenas of
    // their own (`QueryExecutor::new`)
    let state = app_state(&args, &sections)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("talo-io")
        .build()
        .context("starting the runtime")?;
    let res = rt.block_on(serve(args, engine_config, sections, state));
    // a final flush still running past the deadline is abandoned like a crash would be:
    // the WAL keeps its rows; don't let the runtime wait for it
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    res
}

/// The HTTP state: tokens from the config file, limits from the flags; starts the query
/// runtime.
fn app_state(
    args: &ServeArgs,
    sections: &crate::config::FileSections,
) -> anyhow::Result<Arc<AppState>> {
    let auth = talo_query::Auth::new(&sections.tokens)
        .map_err(|e| anyhow::anyhow!("invalid [[tokens]] in the config file: {e}"))?;
    if auth.enabled() {
        tracing::info!(tokens = sections.tokens.len(), "token authentication on");
    } else {
        tracing::warn!(
            "NO TOKENS CONFIGURED: authentication is OFF, anyone who can reach {} may read and write every database",
            args.http_addr
        );
    }
    AppState::new(
        HttpConfig {
            max_body_bytes: args.max_body_mb << 20,
            auth,
        },
        args.query_config(),
    )
    .context("starting the query runtime")
}

async fn serve(
    args: ServeArgs,
    engine_config: talo_engine::EngineConfig,
    sections: crate::config::FileSections,
    state: Arc<AppState>,
) -> anyhow::Result<()> {
    let rollup_rules = sections.rollup_rules()?;
    let routes = talo_ingest::routes::build_routes(&sections.mqtt.routes)
        .map_err(|e| anyhow::anyhow!("invalid [[mqtt.routes]]: {e}"))?;
    let routes = Arc::new(routes);
    let mqtt = args
        .mqtt_url
        .as_ref()
        .map(|url| talo_ingest::mqtt::MqttConfig {
            url: url.clone(),
            client_id: args.mqtt_client_id.clone(),
            routes: Arc::clone(&routes),
            max_batch: 2000,
            protocol: if args.mqtt_protocol == "5" { 5 } else { 4 },
            ca_file: args.mqtt_ca_file.clone(),
        });
    if let Some(m) = &mqtt {
        talo_ingest::mqtt::validate(m).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let listener = tokio::net::TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("binding the HTTP address {}", args.http_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP listening");
    // the embedded MQTT endpoint is bound now and accepts once the engine is open; an
    // explicit address that cannot be bound fails the start, the implicit default only
    // turns the endpoint off (e.g. Mosquitto already listens on 1883)
    let (listen, explicit) = match &args.mqtt_listen {
        Some(a) => (a.trim(), true),
        None => (DEFAULT_MQTT_LISTEN, false),
    };
    let mqtt_listener = match listen {
        "off" | "" => None,
        a => {
            if args.mqtt_max_packet_kb == 0 || args.mqtt_max_connections == 0 {
                anyhow::bail!("--mqtt-max-packet-kb and --mqtt-max-connections must be positive");
            }
            match tokio::net::TcpListener::bind(a).await {
                Ok(l) => Some(l),
                Err(e) if !explicit => {
                    tracing::error!(
                        error = %e,
                        "the default MQTT address {a} is taken (another broker?): the embedded MQTT endpoint is OFF; give --mqtt-listen ADDR to use another address, or --mqtt-listen off to silence this"
                    );
                    None
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "binding the MQTT address {a} (--mqtt-listen; `off` disables it)"
                    )));
                }
            }
        }
    };
    // machine-readable lines for scripts and tests that start talo on port 0
    println!("talo listening http={addr}");
    if let Some(l) = &mqtt_listener {
        let a = l.local_addr()?;
        tracing::info!(addr = %a, "MQTT listening");
        println!("talo listening mqtt={a}");
    }

    let cancel = CancellationToken::new();
    let server_cancel = cancel.clone();
    let server = tokio::spawn(talo_query::serve(
        listener,
        Arc::clone(&state),
        async move { server_cancel.cancelled().await },
    ));

    let signal_cancel = cancel.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        signal_cancel.cancel();
    });

    tracing::info!(data_dir = %engine_config.data_dir.display(), "opening the engine and replaying the WAL");
    let engine = tokio::select! {
        r = tokio::task::spawn_blocking(move || Engine::open(engine_config)) => r.context("engine task")?.context("opening the data directory")?,
        _ = cancel.cancelled() => {
            return Ok(());
        }
    };
    let report = engine.recovery_report();
    tracing::info!(
        rows_replayed = report.rows_replayed,
        segments = report.segments,
        "ready"
    );
    // retention from the config file (it wins over runtime changes at each start)
    for (db, d) in &sections.databases {
        if let Some(keep) = d.retention {
            engine
                .set_retention(db, None, Some(keep))
                .with_context(|| format!("[databases.{db}] retention"))?;
        }
        for (t, ts) in &d.tables {
            if let Some(keep) = ts.retention {
                engine
                    .set_retention(db, Some(t), Some(keep))
                    .with_context(|| format!("[databases.{db}.tables.{t}] retention"))?;
            }
        }
    }
    state.set_engine(Arc::clone(&engine));

    let rollup_cancel = CancellationToken::new();
    let rollup_task = (!rollup_rules.is_empty()).then(|| {
        tracing::info!(rules = rollup_rules.len(), "maintaining rollups");
        let metrics = Arc::new(talo_query::rollup::RollupMetrics::default());
        let shown = Arc::clone(&metrics);
        state.add_metrics(Arc::new(move |out: &mut String| shown.render(out)));
        tokio::spawn(talo_query::rollup::run(
            Arc::clone(&engine),
            rollup_rules,
            args.query_config(),
            args.rollup_interval,
            metrics,
            rollup_cancel.clone(),
        ))
    });

    let mqtt_cancel = CancellationToken::new();
    let mqtt_task = mqtt.map(|m| {
        tracing::info!(filters = m.routes.len(), "subscribing to the MQTT broker");
        let metrics = Arc::new(MqttMetrics::new(Source::Broker, &routes));
        let shown = Arc::clone(&metrics);
        state.add_metrics(Arc::new(move |out: &mut String| shown.render(out)));
        tokio::spawn(talo_ingest::mqtt::run(
            m,
            Arc::clone(&engine),
            metrics,
            mqtt_cancel.clone(),
        ))
    });
    let listener_task = mqtt_listener.map(|l| {
        let metrics = Arc::new(MqttMetrics::new(Source::Listener, &routes));
        let shown = Arc::clone(&metrics);
        state.add_metrics(Arc::new(move |out: &mut String| shown.render(out)));
        let ing = talo_ingest::pipeline::Ingestor {
            engine: Arc::clone(&engine),
            routes: Arc::clone(&routes),
            metrics,
        };
        let auth: Option<Arc<dyn talo_ingest::listener::Authenticator>> = if state.auth().enabled()
        {
            Some(Arc::new(TokenLogin(state.auth().clone())))
        } else {
            None
        };
        let cfg = talo_ingest::listener::ListenerConfig {
            max_packet_bytes: args.mqtt_max_packet_kb << 10,
            max_connections: args.mqtt_max_connections,
            ..Default::default()
        };
        tokio::spawn(talo_ingest::listener::serve(
            l,
            ing,
            cfg,
            auth,
            mqtt_cancel.clone(),
        ))
    });

    cancel.cancelled().await;
    // one deadline for the whole shutdown, so a container stop is bounded by
    // --shutdown-timeout however the time splits between the steps
    let deadline = tokio::time::Instant::now() + args.shutdown_timeout;
    // stop taking messages first: what is not acknowledged stays with the broker (or
    // the device), what is committed gets its acknowledgement
    mqtt_cancel.cancel();
    if let Some(t) = listener_task
        && tokio::time::timeout_at(deadline, t).await.is_err()
    {
        tracing::warn!("MQTT connections did not finish in time");
    }
    if let Some(t) = mqtt_task
        && let Ok(Ok(Err(e))) = tokio::time::timeout_at(deadline, t).await
    {
        tracing::error!(error = %e, "MQTT subscriber stopped with an error");
    }
    // a rollup pass in progress finishes its write; what it did not settle is recomputed
    // after the restart (dirty ranges survive through the WAL and dirty.json)
    rollup_cancel.cancel();
    if let Some(t) = rollup_task
        && tokio::time::timeout_at(deadline, t).await.is_err()
    {
        tracing::warn!("the rollup pass did not finish in time");
    }
    // stop accepting, finish in-flight requests
    let drained = tokio::time::timeout_at(deadline, server).await;
    if drained.is_err() {
        tracing::warn!("in-flight requests did not finish in time");
    }
    let flush_engine = Arc::clone(&engine);
    let flushed = tokio::time::timeout_at(
        deadline,
        tokio::task::spawn_blocking(move || flush_engine.shutdown()),
    )
    .await;
    match flushed {
        Ok(Ok(Ok(()))) => tracing::info!("flushed; bye"),
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "final flush failed; the WAL keeps the data"),
        _ => tracing::error!("final flush did not finish in time; the WAL keeps the data"),
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
