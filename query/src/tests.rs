//! Handler tests without a socket (`app().oneshot`).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;

fn setup() -> (tempfile::TempDir, Arc<AppState>, Router) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(talo_engine::EngineConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    let state = AppState::new(HttpConfig {
        max_body_bytes: 4096,
    });
    state.set_engine(engine);
    let app = app(Arc::clone(&state));
    (dir, state, app)
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
            String::from_utf8_lossy(&bytes).into(),
        ))
    };
    (status, v)
}

fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri).body(body.into()).unwrap()
}

#[tokio::test]
async fn not_ready_until_engine_is_set() {
    let state = AppState::new(HttpConfig::default());
    let app = app(Arc::clone(&state));
    let (s, v) = send(&app, Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(v["error"].as_str().unwrap().contains("replayed"));
    let (s, _) = send(&app, post("/api/v1/write", "m f=1")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = send(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn writes_partial_writes_and_catalog() {
    let (_d, state, app) = setup();
    let (s, _) = send(
        &app,
        post(
            "/api/v1/write?db=house",
            "env,room=a t=1 1\nenv,room=b t=2 2\n",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = send(
        &app,
        post(
            "/api/v1/write?db=house&precision=s",
            "env t=3 3\nenv t=\"x\" 4\nbroken\nenv t=5\n",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["rows_written"], 2);
    let lines: Vec<u64> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3]);
    assert!(
        v["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("type conflict")
    );
    // accept_partial=false stores nothing
    let (s, v) = send(
        &app,
        post(
            "/api/v3/write_lp?db=house&accept_partial=false",
            "env t=6 6\nenv t=true 7\n",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["rows_written"], 0);
    let snap = state.engine().unwrap().snapshot();
    assert_eq!(snap.buffered_rows(), 4);

    let (s, v) = send(
        &app,
        Request::get("/api/v1/tables?db=house")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let cols = &v["tables"][0]["columns"];
    assert_eq!(cols[0]["name"], "time");
    assert_eq!(
        cols[1],
        serde_json::json!({"name": "room", "type": "tag", "role": "tag"})
    );
    assert_eq!(
        cols[2],
        serde_json::json!({"name": "t", "type": "float", "role": "field"})
    );
    let (s, _) = send(
        &app,
        Request::get("/api/v1/tables?db=nope")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn influx_compatible_endpoints() {
    let (_d, state, app) = setup();
    for uri in [
        "/write?db=a&precision=ms",
        "/api/v2/write?bucket=a/autogen&org=x&precision=ms",
        "/api/v3/write_lp?db=a&precision=millisecond",
    ] {
        let (s, v) = send(&app, post(uri, "cpu,host=h usage=1.5 1700000000000")).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{uri}: {v}");
    }
    let snap = state.engine().unwrap().snapshot();
    let t = snap.table("a", "cpu").unwrap();
    assert_eq!(
        t.chunks.iter().map(|c| c.batch.num_rows()).sum::<usize>(),
        3
    );
    assert_eq!(t.chunks[0].min_time, 1_700_000_000_000_000_000);
    for uri in ["/write", "/api/v2/write", "/api/v3/write_lp"] {
        let (s, v) = send(&app, post(uri, "cpu f=1")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert!(v["error"].as_str().unwrap().contains("required"));
    }
}

#[tokio::test]
async fn hostile_input() {
    let (_d, _state, app) = setup();
    // oversized body
    let (s, v) = send(&app, post("/api/v1/write?db=x", vec![b'a'; 5000])).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    // gzip bomb: small compressed, large decompressed
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &vec![b'#'; 1 << 20]).unwrap();
    let gz = enc.finish().unwrap();
    assert!(gz.len() < 4096);
    let req = Request::post("/api/v1/write?db=x")
        .header("content-encoding", "gzip")
        .body(Body::from(gz))
        .unwrap();
    let (s, _) = send(&app, req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // not gzip at all
    let req = Request::post("/api/v1/write?db=x")
        .header("content-encoding", "gzip")
        .body(Body::from("m f=1"))
        .unwrap();
    let (s, v) = send(&app, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("gzip"));
    // gzip that is fine
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, b"m f=1 1\n").unwrap();
    let req = Request::post("/api/v1/write?db=x")
        .header("content-encoding", "gzip")
        .body(Body::from(enc.finish().unwrap()))
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::NO_CONTENT);
    // path-escaping database names, bad precision, binary garbage
    for uri in [
        "/api/v1/write?db=..",
        "/api/v1/write?db=%2Fetc",
        "/api/v1/write?db=a%00b",
        "/api/v1/write?db=x&precision=weeks",
    ] {
        let (s, v) = send(&app, post(uri, "m f=1")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
    }
    let (s, v) = send(
        &app,
        post("/api/v1/write?db=x", vec![0xffu8, 0, 1, b'\n', 0x80]),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = send(&app, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
