//! `secchan server --sink postgres://...`: every message inserted into PostgreSQL, exactly
//! once (docs/deployment.md).
//!
//! Each batch the intake hands over is one `INSERT ... SELECT FROM unnest(...) ON CONFLICT
//! (fingerprint, stream, seq) DO NOTHING` statement, committed before `write` returns: the
//! table's primary key drops whatever another server instance, or this one before a crash,
//! already inserted, so a message is in the table once however often its device sends it and
//! whichever instance receives it. The statement runs on a pooled connection (deadpool):
//! one that broke is replaced at the next batch. Errors that may pass (the database is
//! restarting or unreachable, a failover, a serialization failure) are `retryable`, and the
//! intake writes the batch again; the rest (authentication, permissions, a missing table)
//! stop the server with one line.
//!
//! The password never comes from the URL, which shows in the process list: a URL that carries
//! one is refused, and [`parse`] takes it from a file or the environment instead.

mod schema;

use super::sink::{Sink, SinkError, SinkFuture, SinkRecord};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use std::time::{Duration, SystemTime};
use tokio_postgres::config::Host;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;
use zeroize::Zeroizing;

/// Connections the pool keeps: the intake writes one batch at a time, and a second lets a
/// broken connection be replaced while the first is still being dropped.
const POOL_SIZE: usize = 2;
/// How long a batch's statement may take before it counts as failed and is written again (the
/// primary key absorbs a first attempt that did commit); also how long the pool may take to
/// hand out a connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connection timeout when the URL sets none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One batch: the columns of every row, in the order of [`INSERT`]'s parameters.
const INSERT: &str = "INSERT INTO secchan_messages
    (fingerprint, stream, seq, device, received_at, suite, aead, peer, payload, payload_bytes)
SELECT f, s, q, d, r, su, a, p, j::jsonb, b
FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::text[], $5::timestamptz[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::bytea[]) AS t(f, s, q, d, r, su, a, p, j, b)
ON CONFLICT (fingerprint, stream, seq) DO NOTHING";

/// A parsed `postgres://` sink URL: where to connect, and how to name it in logs.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    name: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Target {
    /// `postgres://user@host:port/dbname`: the URL without password or options, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Parses a `postgres://` (or `postgresql://`) URL. A URL with a password (`user:pw@`, or
/// `?password=`) is refused: pass `password` (from a file or the environment) instead.
pub fn parse(url: &str, password: Option<Zeroizing<String>>) -> Result<Target, String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        // The parser's message never repeats the URL, so no password can leak through it.
        format!("not a PostgreSQL URL ({e}): expected postgres://USER@HOST:PORT/DATABASE")
    })?;
    if config.get_password().is_some() {
        return Err(
            "the URL carries a password, which would show in the process list and in \
                    logs: remove it, and put it in a file (--sink-password-file FILE) or in \
                    $PGPASSWORD"
                .into(),
        );
    }
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(
            "sslmode=require: this build connects to PostgreSQL without TLS; reach the \
                    database over a Unix socket or a trusted network (docs/deployment.md)"
                .into(),
        );
    }
    if let Some(p) = password {
        config.password(p.as_bytes());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("secchan");
    }
    let name = display_name(&config);
    Ok(Target { config, name })
}

/// `postgres://user@host:port/dbname`, from the parsed configuration.
fn display_name(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{db}", hosts.join(","))
}

/// The PostgreSQL sink.
pub struct Postgres {
    pool: Pool,
    name: String,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("name", &self.name)
            .finish()
    }
}

impl Postgres {
    /// Connects and brings the schema to the newest version (creating it in an empty
    /// database). Any failure here is returned as it is: a server should not start on a
    /// database it cannot use.
    pub async fn open(target: Target) -> Result<Self, SinkError> {
        let manager = Manager::from_config(
            target.config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WRITE_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| failure(&target.name, e.to_string(), false))?;
        let sink = Self {
            pool,
            name: target.name,
        };
        let mut client = sink.pool.get().await.map_err(|e| sink.pool_failure(e))?;
        let outcome = schema::migrate(&mut client).await.map_err(|e| match e {
            schema::SchemaError::Db(e) => sink.db_failure(&e),
            newer => failure(&sink.name, newer.to_string(), false),
        })?;
        match outcome {
            schema::Outcome::Current(v) => {
                tracing::info!(database = %sink.name, schema = v, "PostgreSQL sink ready")
            }
            schema::Outcome::Migrated { from, to } => {
                tracing::info!(database = %sink.name, from, to, "PostgreSQL sink ready: schema migrated")
            }
        }
        Ok(sink)
    }

    fn db_failure(&self, e: &tokio_postgres::Error) -> SinkError {
        failure(&self.name, describe(e), retryable(e))
    }

    fn pool_failure(&self, e: PoolError) -> SinkError {
        match e {
            PoolError::Backend(e) => self.db_failure(&e),
            PoolError::Timeout(_) => failure(&self.name, "no connection in time".into(), true),
            other => failure(&self.name, other.to_string(), false),
        }
    }

    async fn write_batch(&self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        let mut client = self.pool.get().await.map_err(|e| self.pool_failure(e))?;
        match tokio::time::timeout(WRITE_TIMEOUT, insert(&mut client, batch)).await {
            Ok(inserted) => inserted.map_err(|e| self.db_failure(&e)),
            Err(_) => {
                // Its statement may still be running: the connection leaves the pool (and
                // closes), and the next attempt starts on a fresh one.
                drop(Object::take(client));
                Err(failure(
                    &self.name,
                    format!("no answer in {} s", WRITE_TIMEOUT.as_secs()),
                    true,
                ))
            }
        }
    }
}

impl Sink for Postgres {
    fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> SinkFuture<'a> {
        Box::pin(self.write_batch(batch))
    }
}

fn failure(name: &str, reason: String, retryable: bool) -> SinkError {
    SinkError {
        target: name.to_string(),
        source: std::io::Error::other(reason),
        retryable,
    }
}

/// The error's message, with PostgreSQL's own text and SQLSTATE when the server sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

/// Whether trying again later may succeed. Errors without a SQLSTATE are about the
/// connection (refused, closed, timed out); of the server's, those of the connection
/// (class 08), transaction rollbacks (40: serialization failures, deadlocks), insufficient
/// resources (53: disk full, too many connections), operator intervention (57: shutdown,
/// restart, recovery), I/O errors (58030), a lock not available (55P03), and a read-only
/// transaction (25006: a standby, during a failover). The rest (authentication, privileges,
/// a missing table) will not pass by themselves.
fn retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => retryable_code(code.code()),
    }
}

fn retryable_code(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "40" | "53" | "57"))
        || matches!(code, "58030" | "55P03" | "25006")
}

/// A data exception (class 22): the database refused a value, here a message that parses
/// as JSON but that jsonb does not take (a `\u0000` escape, a number beyond its range).
fn is_data_exception(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22"))
}

/// The message as JSON text, if it is JSON.
fn json_text(data: &[u8]) -> Option<&str> {
    serde_json::from_slice::<serde::de::IgnoredAny>(data).ok()?;
    std::str::from_utf8(data).ok()
}

/// The columns of a batch, in [`INSERT`]'s parameter order.
struct Rows<'a> {
    fingerprint: Vec<String>,
    stream: Vec<&'a [u8]>,
    seq: Vec<i64>,
    device: Vec<&'a str>,
    received: Vec<SystemTime>,
    suite: Vec<&'static str>,
    aead: Vec<&'static str>,
    peer: Vec<&'a str>,
    json: Vec<Option<&'a str>>,
    bytes: Vec<Option<&'a [u8]>>,
}

impl<'a> Rows<'a> {
    /// The rows of `batch`; with `as_json`, each JSON message goes to `payload`.
    fn new(batch: &'a [SinkRecord], as_json: bool) -> Self {
        let n = batch.len();
        let mut rows = Self {
            fingerprint: Vec::with_capacity(n),
            stream: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            device: Vec::with_capacity(n),
            received: Vec::with_capacity(n),
            suite: Vec::with_capacity(n),
            aead: Vec::with_capacity(n),
            peer: Vec::with_capacity(n),
            json: Vec::with_capacity(n),
            bytes: Vec::with_capacity(n),
        };
        for r in batch {
            let o = &r.origin;
            rows.fingerprint.push(
                o.device
                    .identity
                    .map(|i| i.fingerprint())
                    .unwrap_or_default(),
            );
            rows.stream.push(&r.stream);
            // Two's complement: sequence numbers of 2^63 and above become negative, uniquely.
            rows.seq.push(r.seq as i64);
            rows.device.push(&o.device.name);
            rows.received.push(r.received);
            rows.suite.push(o.suite);
            rows.aead.push(o.aead);
            rows.peer.push(&o.peer);
            let json = if as_json { json_text(&r.data) } else { None };
            rows.bytes.push(json.is_none().then_some(&r.data[..]));
            rows.json.push(json);
        }
        rows
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.fingerprint,
            &self.stream,
            &self.seq,
            &self.device,
            &self.received,
            &self.suite,
            &self.aead,
            &self.peer,
            &self.json,
            &self.bytes,
        ]
    }
}

/// Inserts a batch in one statement (its own transaction, committed when it returns). If
/// the database refuses a value, the batch is inserted row by row instead, each refused
/// message as bytes.
async fn insert(client: &mut Object, batch: &[SinkRecord]) -> Result<(), tokio_postgres::Error> {
    let statement = client.prepare_cached(INSERT).await?;
    match client
        .execute(&statement, &Rows::new(batch, true).params())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_data_exception(&e) => {
            tracing::debug!(error = %describe(&e), "a message of the batch is not valid jsonb: inserting row by row");
            insert_row_by_row(client, batch).await
        }
        Err(e) => Err(e),
    }
}

/// [`insert`]'s fallback: one transaction, a savepoint per row.
async fn insert_row_by_row(
    client: &mut Object,
    batch: &[SinkRecord],
) -> Result<(), tokio_postgres::Error> {
    let statement = client.prepare_cached(INSERT).await?;
    let mut tx = client.transaction().await?;
    for row in batch.chunks(1) {
        let savepoint = tx.savepoint("secchan_row").await?;
        match savepoint
            .execute(&statement, &Rows::new(row, true).params())
            .await
        {
            Ok(_) => savepoint.commit().await?,
            Err(e) if is_data_exception(&e) => {
                savepoint.rollback().await?;
                tracing::warn!(device = %row[0].origin.device.name, seq = row[0].seq, error = %describe(&e), "the database refused a JSON message as jsonb: stored in payload_bytes");
                tx.execute(&statement, &Rows::new(row, false).params())
                    .await?;
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_url_is_refused_and_never_repeated() {
        for url in [
            "postgres://secchan:hunter2@db.example/telemetry",
            "postgresql://secchan@db.example/telemetry?password=hunter2",
            "host=db.example user=secchan password=hunter2",
        ] {
            let e = parse(url, None).unwrap_err();
            assert!(e.contains("--sink-password-file"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let bad = parse("postgres://secchan:hunter2@db.example:notaport/x", None).unwrap_err();
        assert!(!bad.contains("hunter2"), "{bad}");
    }

    #[test]
    fn the_display_name_has_no_password_and_names_host_port_user_and_database() {
        let t = parse(
            "postgres://secchan@db.example:5433/telemetry?connect_timeout=3",
            Some(Zeroizing::new("hunter2".into())),
        )
        .unwrap();
        assert_eq!(t.name(), "postgres://secchan@db.example:5433/telemetry");
        assert_eq!(format!("{t:?}"), t.name());
        assert_eq!(t.config.get_password(), Some(&b"hunter2"[..]));
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        let t = parse("postgres://[::1]/x", None).unwrap();
        assert_eq!(t.name(), "postgres://[::1]:5432/x");
        assert_eq!(t.config.get_application_name(), Some("secchan"));
    }

    #[test]
    fn errors_that_may_pass_are_retryable_and_the_rest_are_not() {
        for code in [
            "08006", "08001", "57P01", "57P03", "53100", "53300", "40001", "40P01", "25006",
            "58030", "55P03",
        ] {
            assert!(retryable_code(code), "{code}");
        }
        for code in [
            "28P01", "28000", "42501", "42P01", "3D000", "22P02", "23505", "XX000",
        ] {
            assert!(!retryable_code(code), "{code}");
        }
    }

    #[test]
    fn json_messages_go_to_payload_and_the_rest_to_payload_bytes() {
        assert_eq!(json_text(b"{\"t\":21.5}"), Some("{\"t\":21.5}"));
        assert_eq!(json_text(b"21.5"), Some("21.5"));
        assert_eq!(json_text(b"not json"), None);
        assert_eq!(json_text(b""), None);
        assert_eq!(json_text(b"\xff"), None);
    }
}
