//! `secchan server --sink URL`: where the server writes what devices send (docs/deployment.md).

use super::CliError;
use crate::service::sink::{JsonLines, Sink};
use clap::Args;
use std::path::{Path, PathBuf};
#[cfg(any(feature = "postgres", feature = "mqtt"))]
use zeroize::Zeroizing;

/// Environment variable holding the sink's password (instead of --sink-password-file).
#[cfg(any(feature = "postgres", feature = "mqtt"))]
pub const PASSWORD_ENV: &str = "SECCHAN_SINK_PASSWORD";

/// Sink options of `secchan server`.
#[derive(Debug, Args)]
pub(super) struct SinkArgs {
    /// Where messages go: `stdout` (JSON lines, the default), `postgres://USER@HOST:PORT/DB`
    /// (one row per message, exactly once; feature postgres), or
    /// `mqtt://HOST:PORT/TOPIC` (republished with QoS 1; `{device}`, `{fingerprint}` and
    /// `{stream}` in TOPIC are filled in). A message is acknowledged to its device only once
    /// the sink has it (PostgreSQL committed, the broker's PUBACK). Never put a password in
    /// the URL: it is refused.
    #[arg(long, value_name = "URL", default_value = "stdout")]
    sink: String,
    /// File holding the sink's password (PostgreSQL or broker) [default: $SECCHAN_SINK_PASSWORD,
    /// or for PostgreSQL $PGPASSWORD].
    #[arg(long, value_name = "FILE")]
    sink_password_file: Option<PathBuf>,
    /// Create or migrate the PostgreSQL sink's schema, then exit (the server also does it at
    /// start, with a role that may create tables).
    #[arg(long, group = "transport")]
    pub(super) init_sink: bool,
}

/// A parsed `--sink`.
enum Kind {
    Stdout,
    #[cfg(feature = "postgres")]
    Postgres(Box<crate::service::sink_postgres::Target>),
    #[cfg(feature = "mqtt")]
    Mqtt(Box<crate::service::sink_mqtt::Target>),
}

fn refused(reason: impl Into<String>) -> CliError {
    CliError::Sink(reason.into())
}

impl SinkArgs {
    /// The password from --sink-password-file, else from `$SECCHAN_SINK_PASSWORD`, else from
    /// `fallback_env`.
    #[cfg(any(feature = "postgres", feature = "mqtt"))]
    fn password(&self, fallback_env: Option<&str>) -> Result<Option<Zeroizing<String>>, CliError> {
        if let Some(path) = &self.sink_password_file {
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                refused(format!(
                    "cannot read the password file {}: {e}",
                    path.display()
                ))
            })?);
            return Ok(Some(Zeroizing::new(
                text.trim_end_matches(['\r', '\n']).to_string(),
            )));
        }
        let from_env = |name: &str| std::env::var(name).ok().map(Zeroizing::new);
        Ok(from_env(PASSWORD_ENV).or_else(|| fallback_env.and_then(from_env)))
    }

    fn kind(&self) -> Result<Kind, CliError> {
        let scheme = self.sink.split_once("://").map(|(s, _)| s);
        match scheme {
            None if self.sink == "stdout" => Ok(Kind::Stdout),
            #[cfg(feature = "postgres")]
            Some("postgres" | "postgresql") => {
                let password = self.password(Some("PGPASSWORD"))?;
                Ok(Kind::Postgres(Box::new(
                    crate::service::sink_postgres::parse(&self.sink, password).map_err(refused)?,
                )))
            }
            #[cfg(not(feature = "postgres"))]
            Some("postgres" | "postgresql") => Err(refused(
                "this secchan was built without the postgres feature: build it with `cargo build --release --features postgres`",
            )),
            #[cfg(feature = "mqtt")]
            Some("mqtt" | "mqtts") => {
                let password = self.password(None)?;
                Ok(Kind::Mqtt(Box::new(
                    crate::service::sink_mqtt::parse(&self.sink, password).map_err(refused)?,
                )))
            }
            _ => Err(refused(
                "expected stdout, postgres://USER@HOST:PORT/DATABASE or mqtt://HOST:PORT/TOPIC",
            )),
        }
    }

    /// `--init-sink`: creates or migrates the PostgreSQL schema.
    pub(super) async fn init(&self) -> Result<(), CliError> {
        match self.kind()? {
            #[cfg(feature = "postgres")]
            Kind::Postgres(target) => {
                crate::service::sink_postgres::Postgres::open(*target)
                    .await
                    .map_err(CliError::Output)?;
                Ok(())
            }
            _ => Err(refused("--init-sink is for a postgres:// sink")),
        }
    }

    /// Opens the sink. `out` is `--out` (JSON lines only); with `durable` (a state
    /// directory) the file is fsync'd after every batch.
    pub(super) async fn open(
        &self,
        out: Option<&Path>,
        durable: bool,
    ) -> Result<Box<dyn Sink>, CliError> {
        let kind = self.kind()?;
        if out.is_some() && !matches!(kind, Kind::Stdout) {
            return Err(refused("--out FILE is for JSON lines (--sink stdout)"));
        }
        Ok(match kind {
            Kind::Stdout => Box::new(JsonLines::open(out, durable).map_err(CliError::Output)?),
            #[cfg(feature = "postgres")]
            Kind::Postgres(target) => Box::new(
                crate::service::sink_postgres::Postgres::open(*target)
                    .await
                    .map_err(CliError::Output)?,
            ),
            #[cfg(feature = "mqtt")]
            Kind::Mqtt(target) => Box::new(
                crate::service::sink_mqtt::MqttRepublish::open(*target)
                    .await
                    .map_err(CliError::Output)?,
            ),
        })
    }
}

/// For benchmarks: the sink `url` names (its password from `password_file` or the
/// environment), as its name without credentials and a function that opens a fresh one;
/// `None` for stdout.
pub(super) fn opener(
    url: &str,
    password_file: Option<PathBuf>,
) -> Result<Option<(String, crate::bench::sinks::OpenSink)>, CliError> {
    let args = SinkArgs {
        sink: url.to_string(),
        sink_password_file: password_file,
        init_sink: false,
    };
    Ok(match args.kind()? {
        Kind::Stdout => None,
        #[cfg(feature = "postgres")]
        Kind::Postgres(target) => Some(reopen(
            target.name().to_string(),
            *target,
            crate::service::sink_postgres::Postgres::open,
        )),
        #[cfg(feature = "mqtt")]
        Kind::Mqtt(target) => Some(reopen(
            target.name().to_string(),
            *target,
            crate::service::sink_mqtt::MqttRepublish::open,
        )),
    })
}

/// `name`, and a function that opens a fresh sink from `target` with `open`.
#[cfg(any(feature = "postgres", feature = "mqtt"))]
fn reopen<T, S, F>(
    name: String,
    target: T,
    open: fn(T) -> F,
) -> (String, crate::bench::sinks::OpenSink)
where
    T: Clone + Send + 'static,
    S: Sink + 'static,
    F: std::future::Future<Output = Result<S, crate::service::sink::SinkError>> + Send + 'static,
{
    let opener: crate::bench::sinks::OpenSink = Box::new(move || {
        let opening = open(target.clone());
        Box::pin(async move { Ok(Box::new(opening.await?) as Box<dyn Sink>) })
    });
    (name, opener)
}
