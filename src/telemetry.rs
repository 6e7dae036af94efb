//! Telemetry sources for a device: lines of stdin, the rows of a CSV dataset replayed as JSON
//! objects, or simulated sensor readings. Each item is one message; a source knows nothing of
//! the transport that carries it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Stdin};
use tokio::time::{Interval, MissedTickBehavior};

/// Fastest accepted `--rate`: one message per 10 µs is beyond any sensor.
pub const MAX_RATE: f64 = 100_000.0;

/// Where telemetry comes from, as given to `--telemetry`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TelemetrySpec {
    /// Each line of stdin is one message, whatever its bytes (UTF-8 or not).
    Stdin,
    /// Each row of a CSV file (with a header row) becomes one JSON object.
    Csv(PathBuf),
    /// Simulated readings: temperature, humidity, heart rate, SpO2.
    Sim,
}

impl std::str::FromStr for TelemetrySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdin" => Ok(Self::Stdin),
            "sim" => Ok(Self::Sim),
            _ => match s.strip_prefix("csv:") {
                Some(path) if !path.is_empty() => Ok(Self::Csv(PathBuf::from(path))),
                _ => Err(format!(
                    "unknown telemetry source {s:?}: use stdin, csv:FILE or sim"
                )),
            },
        }
    }
}

/// Messages per second, as given to `--rate`: `10` or `10/s` per second, `2/min` per minute,
/// `30/h` per hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(f64);

impl Rate {
    /// The time between two messages.
    pub fn interval(self) -> Duration {
        Duration::from_secs_f64(1.0 / self.0)
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (number, per) = match s.split_once('/') {
            None => (s, 1.0),
            Some((n, "s")) => (n, 1.0),
            Some((n, "min")) => (n, 60.0),
            Some((n, "h")) => (n, 3600.0),
            Some(_) => (s, f64::NAN),
        };
        match number.parse::<f64>().map(|n| n / per) {
            Ok(r) if r > 0.0 && r <= MAX_RATE => Ok(Self(r)),
            _ => Err(format!(
                "invalid rate {s:?}: give messages per second, minute or hour, e.g. 10/s, 2/min or 30/h (at most {MAX_RATE}/s)"
            )),
        }
    }
}

/// Why a telemetry source failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The dataset could not be opened or read.
    #[error("cannot read telemetry dataset {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A row of the dataset is malformed.
    #[error("telemetry dataset {path}: {reason}; the file must be CSV with a header row and the same number of fields on every row")]
    Csv {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        reason: String,
    },
    /// Reading stdin failed.
    #[error("cannot read telemetry from stdin: {0}")]
    Stdin(std::io::Error),
}

enum Kind {
    Stdin {
        reader: BufReader<Stdin>,
        /// The line being read. It lives here, not in the read's future, so a read the
        /// caller cancels (a `select!` whose other branch won) loses no bytes.
        line: Vec<u8>,
    },
    Csv {
        path: PathBuf,
        header: Vec<String>,
        rows: csv::StringRecordsIntoIter<std::fs::File>,
    },
    Sim,
    /// Lines another task hands over (`secchan chat`'s terminal UI).
    Channel(tokio::sync::mpsc::Receiver<Vec<u8>>),
}

/// A telemetry source: call [`next`](Self::next) until it returns `None`.
pub struct Source {
    kind: Kind,
    pace: Option<Interval>,
    limit: Option<u64>,
    produced: u64,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("produced", &self.produced)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// Default pace of the dataset and simulated sources: one message per second.
const DEFAULT_RATE: Rate = Rate(1.0);

impl Source {
    /// Opens a source. `rate` paces messages (default: stdin unpaced, the others 1/s);
    /// `limit` stops after that many messages.
    pub fn open(
        spec: &TelemetrySpec,
        rate: Option<Rate>,
        limit: Option<u64>,
    ) -> Result<Self, TelemetryError> {
        let (kind, rate) = match spec {
            TelemetrySpec::Stdin => (
                Kind::Stdin {
                    reader: BufReader::new(tokio::io::stdin()),
                    line: Vec::new(),
                },
                rate,
            ),
            TelemetrySpec::Csv(path) => (open_csv(path)?, rate.or(Some(DEFAULT_RATE))),
            TelemetrySpec::Sim => (Kind::Sim, rate.or(Some(DEFAULT_RATE))),
        };
        let pace = rate.map(|r| {
            let mut i = tokio::time::interval(r.interval());
            // After a pause (a full buffer) go on at the set rate rather than in a burst.
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        Ok(Self {
            kind,
            pace,
            limit,
            produced: 0,
        })
    }

    /// A source of the lines sent into `lines`, unpaced, ending when every sender is dropped.
    pub fn channel(lines: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            kind: Kind::Channel(lines),
            pace: None,
            limit: None,
            produced: 0,
        }
    }

    /// Messages produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The next message, waiting for the pace; `None` when the source is exhausted. Cancel
    /// safe: a call dropped before it returns loses nothing.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, TelemetryError> {
        if self.limit.is_some_and(|l| self.produced >= l) {
            return Ok(None);
        }
        if let Some(pace) = &mut self.pace {
            pace.tick().await;
        }
        let item = match &mut self.kind {
            Kind::Stdin { reader, line } => next_line(reader, line)
                .await
                .map_err(TelemetryError::Stdin)?,
            Kind::Csv { path, header, rows } => match rows.next() {
                None => None,
                Some(Ok(row)) => Some(row_to_json(header, &row).into_bytes()),
                Some(Err(e)) => {
                    return Err(TelemetryError::Csv {
                        path: path.clone(),
                        reason: e.to_string(),
                    })
                }
            },
            Kind::Sim => Some(sim_reading(self.produced, unix_ms()).into_bytes()),
            Kind::Channel(lines) => lines.recv().await,
        };
        if item.is_some() {
            self.produced += 1;
        }
        Ok(item)
    }
}

/// The next line of `reader` without its `\n` or `\r\n`, as bytes: a message need not be
/// UTF-8. Bytes read by a cancelled call wait in `line` for the next one. A last line without
/// a newline is a line too.
async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    if reader.read_until(b'\n', line).await? == 0 && line.is_empty() {
        return Ok(None);
    }
    let mut out = std::mem::take(line);
    if out.last() == Some(&b'\n') {
        out.pop();
        if out.last() == Some(&b'\r') {
            out.pop();
        }
    }
    Ok(Some(out))
}

fn open_csv(path: &Path) -> Result<Kind, TelemetryError> {
    let file = std::fs::File::open(path).map_err(|source| TelemetryError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(file);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| TelemetryError::Csv {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .iter()
        .map(str::to_string)
        .collect();
    if header.is_empty() || header.iter().any(String::is_empty) {
        return Err(TelemetryError::Csv {
            path: path.to_path_buf(),
            reason: "the header row has an empty column name".into(),
        });
    }
    Ok(Kind::Csv {
        path: path.to_path_buf(),
        header,
        rows: reader.into_records(),
    })
}

/// A JSON value for one CSV field: a number if it reads as a finite one, else a string.
fn field_value(field: &str) -> serde_json::Value {
    if let Ok(i) = field.parse::<i64>() {
        return i.into();
    }
    field
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or_else(|| field.into(), serde_json::Value::Number)
}

/// One CSV row as a JSON object whose keys are the header's names, in the header's order.
pub fn row_to_json(header: &[String], row: &csv::StringRecord) -> String {
    let fields: Vec<String> = header
        .iter()
        .zip(row.iter())
        .map(|(k, v)| format!("{}:{}", serde_json::Value::from(k.as_str()), field_value(v)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Simulated reading number `n`: slow drifts plus small deterministic wobble, within the
/// ranges of a greenhouse sensor and a pulse oximeter.
pub fn sim_reading(n: u64, time_unix_ms: u128) -> String {
    let t = n as f64;
    let temperature = 21.5 + 1.5 * (t / 60.0).sin() + 0.2 * (t * 1.7).sin();
    let humidity = 47.0 + 4.0 * (t / 90.0).cos() + 0.5 * (t * 2.3).sin();
    let heart_rate = (72.0 + 6.0 * (t / 45.0).sin() + 2.0 * (t * 0.9).sin()).round();
    let spo2 = (97.5 + 1.0 * (t / 30.0).sin() + 0.4 * (t * 1.3).cos())
        .round()
        .min(100.0);
    format!(
        r#"{{"sensor":"sim","reading":{n},"time_unix_ms":{time_unix_ms},"temperature_c":{temperature:.2},"humidity_pct":{humidity:.1},"heart_rate_bpm":{heart_rate},"spo2_pct":{spo2}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_and_rate_parse() {
        assert_eq!("stdin".parse::<TelemetrySpec>(), Ok(TelemetrySpec::Stdin));
        assert_eq!("sim".parse::<TelemetrySpec>(), Ok(TelemetrySpec::Sim));
        assert_eq!(
            "csv:data/x.csv".parse::<TelemetrySpec>(),
            Ok(TelemetrySpec::Csv("data/x.csv".into()))
        );
        assert!("csv:".parse::<TelemetrySpec>().is_err());
        assert!("mqtt".parse::<TelemetrySpec>().is_err());
        assert_eq!("10/s".parse::<Rate>(), Ok(Rate(10.0)));
        assert_eq!("2/min".parse::<Rate>(), Ok(Rate(2.0 / 60.0)));
        assert_eq!("36/h".parse::<Rate>(), Ok(Rate(0.01)));
        assert!("2/day".parse::<Rate>().is_err());
        assert_eq!("0.5".parse::<Rate>(), Ok(Rate(0.5)));
        assert_eq!(
            "4/s".parse::<Rate>().unwrap().interval(),
            Duration::from_millis(250)
        );
        for bad in ["0", "-1/s", "fast", "1e9/s", "NaN"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_rows_become_ordered_json_objects() {
        let header = vec![
            "timestamp".to_string(),
            "temperature_c".into(),
            "n".into(),
            "note".into(),
        ];
        let row = csv::StringRecord::from(vec!["2026-01-01T00:00:00Z", "21.5", "7", "ok \"x\""]);
        assert_eq!(
            row_to_json(&header, &row),
            r#"{"timestamp":"2026-01-01T00:00:00Z","temperature_c":21.5,"n":7,"note":"ok \"x\""}"#
        );
        let inf = csv::StringRecord::from(vec!["a", "inf", "", "NaN"]);
        let v: serde_json::Value = serde_json::from_str(&row_to_json(&header, &inf)).unwrap();
        assert_eq!(v["temperature_c"], "inf");
        assert_eq!(v["n"], "");
        assert_eq!(v["note"], "NaN");
    }

    #[test]
    fn sim_readings_are_json_within_range() {
        for n in [0, 1, 500, 100_000] {
            let v: serde_json::Value = serde_json::from_str(&sim_reading(n, 1)).unwrap();
            assert_eq!(v["reading"], n);
            let t = v["temperature_c"].as_f64().unwrap();
            let spo2 = v["spo2_pct"].as_f64().unwrap();
            let hr = v["heart_rate_bpm"].as_f64().unwrap();
            assert!((19.0..=24.0).contains(&t), "{t}");
            assert!((95.0..=100.0).contains(&spo2), "{spo2}");
            assert!((60.0..=85.0).contains(&hr), "{hr}");
        }
    }

    #[tokio::test]
    async fn shipped_dataset_replays_every_row() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample.csv");
        let spec = TelemetrySpec::Csv(path);
        let mut source = Source::open(&spec, Some(Rate(MAX_RATE)), None).unwrap();
        let mut rows = 0;
        while let Some(line) = source.next().await.unwrap() {
            let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert!(v["temperature_c"].is_number(), "{v}");
            assert!(v["timestamp"].is_string(), "{v}");
            rows += 1;
        }
        assert_eq!(rows, 50);
        let mut limited = Source::open(&spec, Some(Rate(MAX_RATE)), Some(3)).unwrap();
        let mut n = 0;
        while limited.next().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn stdin_lines_are_bytes_without_their_line_ending() {
        let mut input = &b"temp=21.5\r\n\xff\xfe binary\n\nlast"[..];
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while let Some(l) = next_line(&mut input, &mut line).await.unwrap() {
            lines.push(l);
        }
        assert_eq!(
            lines,
            [&b"temp=21.5"[..], b"\xff\xfe binary", b"", b"last"].map(<[u8]>::to_vec)
        );
    }

    #[tokio::test]
    async fn malformed_dataset_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("secchan-telemetry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.csv");
        std::fs::write(&file, "a,b\n1,2\n3\n").unwrap();
        let spec = TelemetrySpec::Csv(file.clone());
        let mut s = Source::open(&spec, Some(Rate(MAX_RATE)), None).unwrap();
        assert_eq!(
            s.next().await.unwrap().as_deref(),
            Some(&br#"{"a":1,"b":2}"#[..])
        );
        assert!(matches!(s.next().await, Err(TelemetryError::Csv { .. })));
        let missing = TelemetrySpec::Csv(dir.join("missing.csv"));
        assert!(matches!(
            Source::open(&missing, None, None),
            Err(TelemetryError::Open { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
