//! Deterministic smart-building sensor workload (shared by the benchmarks).
//!
//! N sensors (tags building / room / sensor) report every 10 s with 8 fields:
//! temperature, humidity, voc, pm25, noise (floats at the sensors' resolution), co2 and
//! lux (integers), occupied (boolean). Signals are smooth (slow daily waves + random
//! walk) with noise, as real indoor sensors produce.
#![allow(dead_code, unreachable_pub)]

use talo_engine::{BatchBuilder, Catalog, FieldValue, WriteBatch};

pub const FIELDS_PER_ROW: usize = 8;
pub const INTERVAL_NS: i64 = 10_000_000_000;
pub const START_NS: i64 = 1_764_028_800_000_000_000; // 2025-11-25T00:00:00Z

/// xorshift64*: deterministic by seed, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// State of one simulated sensor.
#[derive(Debug, Clone)]
pub struct Sensor {
    pub building: String,
    pub room: String,
    pub sensor: String,
    temp: f64,
    hum: f64,
    co2: f64,
    voc: f64,
    pm: f64,
    noise: f64,
    occupied: bool,
}

/// One reading: the 8 field values.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub temperature: f64,
    pub humidity: f64,
    pub co2: i64,
    pub voc: f64,
    pub pm25: f64,
    pub lux: i64,
    pub noise: f64,
    pub occupied: bool,
}

/// Round to `decimals` places the way a sensor reporting decimals would (the nearest
/// double to the decimal value).
fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// The simulated building stock.
#[derive(Debug, Clone)]
pub struct Workload {
    pub sensors: Vec<Sensor>,
    rng: Rng,
    pub step: i64,
}

impl Workload {
    /// `n` sensors: 20 rooms per building, 2 sensors per room.
    pub fn new(n: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let sensors = (0..n)
            .map(|i| Sensor {
                building: format!("b{:04}", i / 40),
                room: format!("r{:02}", (i / 2) % 20),
                sensor: format!("s{i:06}"),
                temp: 21.0 + rng.unit() * 2.0,
                hum: 45.0 + rng.unit() * 10.0,
                co2: 600.0 + rng.unit() * 200.0,
                voc: 120.0 + rng.unit() * 40.0,
                pm: 8.0 + rng.unit() * 4.0,
                noise: 35.0 + rng.unit() * 5.0,
                occupied: false,
            })
            .collect();
        Workload {
            sensors,
            rng,
            step: 0,
        }
    }

    /// Time of the current step.
    pub fn time(&self) -> i64 {
        START_NS + self.step * INTERVAL_NS
    }

    /// Advance every sensor by one interval and return their readings.
    pub fn tick(&mut self) -> Vec<Reading> {
        let day_phase = (self.step as f64 * 10.0 / 86_400.0) * std::f64::consts::TAU;
        let daylight = day_phase.sin().max(0.0);
        let rng = &mut self.rng;
        let out = self
            .sensors
            .iter_mut()
            .map(|s| {
                if rng.next_u64().is_multiple_of(360) {
                    s.occupied = !s.occupied;
                }
                let occ = if s.occupied { 1.0 } else { 0.0 };
                s.temp += rng.unit() * 0.02 + (21.0 + occ - s.temp) * 0.001;
                s.hum += rng.unit() * 0.05 + (45.0 - s.hum) * 0.001;
                s.co2 += rng.unit() * 3.0 + (500.0 + 400.0 * occ - s.co2) * 0.01;
                s.voc += rng.unit() * 1.0 + (120.0 - s.voc) * 0.01;
                s.pm = (s.pm + rng.unit() * 0.1).max(0.0);
                s.noise += rng.unit() * 0.3 + (35.0 + 10.0 * occ - s.noise) * 0.05;
                Reading {
                    temperature: round(s.temp + rng.unit() * 0.03, 2),
                    humidity: round(s.hum + rng.unit() * 0.2, 1),
                    co2: s.co2.round() as i64,
                    voc: round(s.voc, 0),
                    pm25: round(s.pm, 1),
                    lux: (daylight * 400.0 + occ * 300.0 + rng.unit().abs() * 5.0) as i64,
                    noise: round(s.noise, 1),
                    occupied: s.occupied,
                }
            })
            .collect();
        self.step += 1;
        out
    }

    /// One write batch with one reading of each sensor.
    pub fn batch(&mut self, db: &str, catalog: std::sync::Arc<Catalog>) -> WriteBatch {
        let time = self.time();
        let readings = self.tick();
        let mut b = BatchBuilder::new(db, catalog).expect("db name");
        for (i, (s, r)) in self.sensors.iter().zip(readings).enumerate() {
            b.push_row(
                "env",
                &[
                    ("building", s.building.as_str()),
                    ("room", s.room.as_str()),
                    ("sensor", s.sensor.as_str()),
                ],
                &[
                    ("temperature", FieldValue::F64(r.temperature)),
                    ("humidity", FieldValue::F64(r.humidity)),
                    ("co2", FieldValue::I64(r.co2)),
                    ("voc", FieldValue::F64(r.voc)),
                    ("pm25", FieldValue::F64(r.pm25)),
                    ("lux", FieldValue::I64(r.lux)),
                    ("noise", FieldValue::F64(r.noise)),
                    ("occupied", FieldValue::Bool(r.occupied)),
                ],
                time,
                i as u32,
            )
            .expect("valid row");
        }
        b.finish().expect("batch")
    }

    /// One reading of each sensor as line protocol.
    pub fn line_protocol(&mut self) -> String {
        use std::fmt::Write;
        let time = self.time();
        let readings = self.tick();
        let mut out = String::new();
        for (s, r) in self.sensors.iter().zip(readings) {
            let _ = writeln!(
                out,
                "env,building={},room={},sensor={} temperature={},humidity={},co2={}i,voc={},pm25={},lux={}i,noise={},occupied={} {time}",
                s.building,
                s.room,
                s.sensor,
                r.temperature,
                r.humidity,
                r.co2,
                r.voc,
                r.pm25,
                r.lux,
                r.noise,
                r.occupied
            );
        }
        out
    }
}

impl Workload {
    /// One reading of each sensor as (MQTT topic, JSON payload): topic
    /// `bench/<building>/<room>/<sensor>`, payload the 8 fields and `ts` in ms.
    pub fn json_messages(&mut self) -> Vec<(String, String)> {
        let ts_ms = self.time() / 1_000_000;
        let readings = self.tick();
        self.sensors
            .iter()
            .zip(readings)
            .map(|(s, r)| {
                (
                    format!("bench/{}/{}/{}", s.building, s.room, s.sensor),
                    format!(
                        r#"{{"ts":{ts_ms},"temperature":{},"humidity":{},"co2":{},"voc":{},"pm25":{},"lux":{},"noise":{},"occupied":{}}}"#,
                        r.temperature,
                        r.humidity,
                        r.co2,
                        r.voc,
                        r.pm25,
                        r.lux,
                        r.noise,
                        r.occupied
                    ),
                )
            })
            .collect()
    }
}

impl Workload {
    /// One reading of each sensor as (MQTT topic, SenML pack): base name
    /// `urn:dev:<sensor>:`, base time in seconds, one record per field (`vb` for the
    /// boolean).
    pub fn senml_messages(&mut self) -> Vec<(String, String)> {
        let ts_s = self.time() as f64 / 1e9;
        let readings = self.tick();
        self.sensors
            .iter()
            .zip(readings)
            .map(|(s, r)| {
                (
                    format!("bench/{}/{}/{}", s.building, s.room, s.sensor),
                    format!(
                        r#"[{{"bn":"urn:dev:{}:","bt":{ts_s},"n":"temperature","u":"Cel","v":{}}},{{"n":"humidity","u":"%RH","v":{}}},{{"n":"co2","u":"ppm","v":{}}},{{"n":"voc","v":{}}},{{"n":"pm25","v":{}}},{{"n":"lux","u":"lx","v":{}}},{{"n":"noise","u":"dB","v":{}}},{{"n":"occupied","vb":{}}}]"#,
                        s.sensor,
                        r.temperature,
                        r.humidity,
                        r.co2,
                        r.voc,
                        r.pm25,
                        r.lux,
                        r.noise,
                        r.occupied
                    ),
                )
            })
            .collect()
    }
}

/// The TSBS `cpu-only` shape: hosts with 10 tags each reporting 10 float fields
/// (usage_user … usage_guest_nice) every 10 s, as bounded random walks — the same shape
/// as TSBS's generator (not its exact values), so rates can be set beside published TSBS
/// results.
#[derive(Debug, Clone)]
pub struct CpuWorkload {
    hosts: Vec<(String, [f64; 10])>,
    rng: Rng,
    pub step: i64,
}

pub const CPU_FIELDS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];

impl CpuWorkload {
    pub fn new(n: usize, seed: u64) -> Self {
        const REGIONS: [&str; 9] = [
            "us-east-1",
            "us-west-1",
            "us-west-2",
            "eu-west-1",
            "eu-central-1",
            "ap-southeast-1",
            "ap-southeast-2",
            "ap-northeast-1",
            "sa-east-1",
        ];
        const OS: [&str; 3] = ["Ubuntu16.10", "Ubuntu16.04LTS", "Ubuntu15.10"];
        const TEAM: [&str; 4] = ["SF", "NYC", "LON", "CHI"];
        const ENV: [&str; 3] = ["production", "staging", "test"];
        let mut rng = Rng::new(seed);
        let mut pick = |k: usize| (rng.next_u64() % k as u64) as usize;
        let hosts = (0..n)
            .map(|i| {
                let region = REGIONS[pick(REGIONS.len())];
                let tags = format!(
                    "hostname=host_{i},region={region},datacenter={region}{},rack={},os={},arch={},team={},service={},service_version={},service_environment={}",
                    ['a', 'b', 'c'][pick(3)],
                    pick(100),
                    OS[pick(3)],
                    ["x64", "x86"][pick(2)],
                    TEAM[pick(4)],
                    pick(20),
                    pick(2),
                    ENV[pick(3)],
                );
                let start = std::array::from_fn(|_| (pick(10_000) as f64) / 100.0);
                (tags, start)
            })
            .collect();
        CpuWorkload {
            hosts,
            rng,
            step: 0,
        }
    }

    pub fn time(&self) -> i64 {
        START_NS + self.step * INTERVAL_NS
    }

    /// One reading of each host as line protocol (measurement `cpu`).
    pub fn line_protocol(&mut self) -> String {
        use std::fmt::Write;
        let time = self.time();
        let mut out = String::new();
        for (tags, vals) in &mut self.hosts {
            let _ = write!(out, "cpu,{tags} ");
            for (k, (name, v)) in CPU_FIELDS.iter().zip(vals.iter_mut()).enumerate() {
                *v = (*v + self.rng.unit()).clamp(0.0, 100.0);
                let sep = if k == 0 { "" } else { "," };
                let _ = write!(out, "{sep}{name}={}", round(*v, 2));
            }
            let _ = writeln!(out, " {time}");
        }
        self.step += 1;
        out
    }
}
