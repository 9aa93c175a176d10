//! talo ingestion: turns payloads into engine writes.
//!
//! In: bytes from HTTP bodies and MQTT messages (JSON, SenML, plain values, line
//! protocol). Out: [`talo_engine::WriteBatch`]es
//! plus, for every row that could not be decoded or stored, its position and reason.
//! Decoders are pure functions over bytes; nothing here touches files.

pub mod decode;
pub mod line_protocol;
pub mod listener;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;
pub mod routes;
mod senml;

pub use line_protocol::{LineError, LpValue, ParsedLine, Precision, parse_lines, write_lines};
