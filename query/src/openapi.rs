//! The OpenAPI 3 description of the HTTP API, served at `/api/v1/openapi.json`.

use serde_json::{Value, json};

fn error_responses(codes: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for c in codes {
        m.insert(
            (*c).to_string(),
            json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(m)
}

/// A database name as the engine accepts it (`talo_engine::model::validate_db_name`).
const DB_NAME: &str = "[A-Za-z0-9-][A-Za-z0-9_-]{0,63}";

fn db_name() -> Value {
    json!({"type": "string", "pattern": format!("^{DB_NAME}$")})
}

/// A write endpoint whose database comes in `db_param`: required unless the endpoint
/// defaults it (talo's own, to `default`); a v2 `bucket` may be `db/retention-policy`.
fn write_op(summary: &str, db_param: &str, required: bool) -> Value {
    let mut db = db_name();
    if db_param == "bucket" {
        db["pattern"] = json!(format!("^{DB_NAME}(/.*)?$"));
    }
    let mut responses = error_responses(&["401", "403", "413", "503"]);
    responses["204"] = json!({"description": "all rows durable"});
    responses["400"] = json!({"description": "some lines rejected (the others are stored unless accept_partial=false)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Rejected"}}}});
    json!({"post": {
        "summary": summary,
        "parameters": [
            {"name": db_param, "in": "query", "required": required, "schema": db},
            {"name": "precision", "in": "query", "schema": {"type": "string", "enum": ["ns", "us", "ms", "s", "n", "u", "m", "h", "nanosecond", "microsecond", "millisecond", "second", "auto"]}},
            {"name": "accept_partial", "in": "query", "schema": {"type": "boolean", "default": true}},
            {"name": "p", "in": "query", "description": "token (InfluxDB v1 password)", "schema": {"type": "string"}}
        ],
        "requestBody": {"content": {"text/plain": {"schema": {"type": "string", "description": "InfluxDB line protocol; Content-Encoding: gzip accepted"}}}},
        "responses": responses
    }})
}

/// The document.
pub(crate) fn document() -> Value {
    let mut query_responses = error_responses(&["400", "401", "403", "413", "429", "503", "504"]);
    // every operation behind the token check answers 401 (once tokens are configured) and
    // 503 while the write-ahead log is replayed
    let mut databases_responses = error_responses(&["401", "503"]);
    databases_responses["200"] = json!({"description": "databases"});
    let mut put_db_responses = error_responses(&["400", "401", "403", "503"]);
    put_db_responses["200"] = json!({"description": "the database's retention now"});
    let mut tables_responses = error_responses(&["400", "401", "403", "404", "503"]);
    tables_responses["200"] = json!({"description": "tables"});
    let mut metrics_responses = error_responses(&["401"]);
    metrics_responses["200"] = json!({"description": "text exposition format"});
    query_responses["200"] = json!({"description": "rows", "content": {
        "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
        "application/x-ndjson": {"schema": {"type": "string"}},
        "text/csv": {"schema": {"type": "string"}},
        "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}},
        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}}
    }});
    let formats = json!({"type": "string", "enum": ["json", "jsonl", "csv", "arrow", "parquet"]});
    let query_params = json!([
        {"name": "sql", "in": "query", "schema": {"type": "string"}},
        {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "alias of sql"},
        {"name": "db", "in": "query", "schema": {"allOf": [db_name()], "default": "default"}},
        {"name": "format", "in": "query", "schema": {"allOf": [formats], "default": "json"}}
    ]);
    json!({
        "openapi": "3.0.3",
        "info": {"title": "talo", "version": env!("CARGO_PKG_VERSION"),
                 "description": "IoT time-series ingestion and storage: line-protocol writes, SQL queries. A token (Authorization: Bearer or Token, or the p parameter of the v1 write) is required once the server has tokens configured."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Rejected": {"type": "object", "properties": {
                    "error": {"type": "string"}, "rows_written": {"type": "integer"}, "rejected_total": {"type": "integer"},
                    "rejected": {"type": "array", "items": {"type": "object", "properties": {"line": {"type": "integer"}, "reason": {"type": "string"}}}}
                }}
            }
        },
        // a token is needed only when the server has tokens configured ({} = none)
        "security": [{"bearer": []}, {}],
        "paths": {
            "/api/v1/query": {
                "get": {"summary": "Run a read-only SQL query", "parameters": query_params, "responses": query_responses},
                "post": {"summary": "Run a read-only SQL query (JSON body {sql, db, format} or text/plain SQL)", "parameters": query_params,
                         "requestBody": {"content": {
                            "application/json": {"schema": {"type": "object", "properties": {"sql": {"type": "string"}, "db": db_name(), "format": formats}}},
                            "text/plain": {"schema": {"type": "string"}}}},
                         "responses": query_responses}
            },
            "/api/v1/write": write_op("Write line protocol (database `default` unless db=)", "db", false),
            "/write": write_op("InfluxDB v1 write", "db", true),
            "/api/v2/write": write_op("InfluxDB v2 write", "bucket", true),
            "/api/v3/write_lp": write_op("InfluxDB v3 write", "db", true),
            "/api/v1/databases": {"get": {"summary": "Databases the token may read", "responses": databases_responses}},
            "/api/v1/databases/{db}": {"put": {"summary": "Change a database's retention (and per-table overrides) at runtime",
                "parameters": [{"name": "db", "in": "path", "required": true, "schema": db_name()}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false,
                    "properties": {"retention": {"type": "string", "nullable": true, "example": "30d"},
                                   "tables": {"type": "object", "additionalProperties": {"type": "string", "nullable": true}}}}}}},
                "responses": put_db_responses}},
            "/api/v1/tables": {"get": {"summary": "Tables of a database with columns, types and roles",
                "parameters": [{"name": "db", "in": "query", "schema": db_name()}],
                "responses": tables_responses}},
            "/health": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "alive"}}}},
            "/ready": {"get": {"summary": "Readiness (WAL replayed)", "security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "starting"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": metrics_responses}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3"}}}}
        }
    })
}
