//! `secchan status`: who is connected, read from the server's control socket, a Unix socket
//! only the server's user can open (mode 0600). `secchan server --control-socket PATH` serves
//! it; under systemd (`RuntimeDirectory=secchan` in dist/systemd) the server's default is
//! `$RUNTIME_DIRECTORY/secchan-server.sock`, elsewhere there is none (two servers of one user
//! must not share one), and `secchan status` looks in `$RUNTIME_DIRECTORY` or `/run/secchan`.
//! One connection gets one JSON document and is closed.

use super::error::CliError;
use crate::service::status::Sessions;
use crate::service::tcp_server;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The socket's file name in its directory.
const SOCKET: &str = "secchan-server.sock";

/// Where a server started by systemd puts its control socket when no --control-socket is
/// given.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("RUNTIME_DIRECTORY").map(|d| PathBuf::from(d).join(SOCKET))
}

/// Where `secchan status` looks when no --control-socket is given: the systemd unit's.
fn status_path() -> PathBuf {
    default_path().unwrap_or_else(|| Path::new("/run/secchan").join(SOCKET))
}

/// `secchan status` arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The server's control socket [default: $RUNTIME_DIRECTORY/secchan-server.sock, else
    /// /run/secchan/secchan-server.sock, where the systemd unit's server has it].
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Print the JSON document the server sent, unformatted.
    #[arg(long)]
    json: bool,
}

fn local_io(path: &Path, what: &str, e: std::io::Error) -> CliError {
    CliError::LocalIo(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

/// The counters a server shows beside its sessions: its transport's own.
#[derive(Debug, Clone)]
pub enum Counters {
    /// The TCP server's admission.
    Tcp(tcp_server::Counters),
    /// The MQTT server instance's.
    #[cfg(feature = "mqtt")]
    Mqtt(crate::transport::mqtt::Counters),
}

impl Counters {
    /// The transport's name (the document's `transport`), handshakes pending now, and the
    /// counters as JSON (its `admission`).
    fn now(&self) -> (&'static str, usize, serde_json::Value) {
        match self {
            Self::Tcp(c) => ("tcp", c.now().0, serde_json::json!(c.stats())),
            #[cfg(feature = "mqtt")]
            Self::Mqtt(c) => ("mqtt", c.now().0, serde_json::json!(c.stats())),
        }
    }
}

/// The document a connection to the control socket gets.
fn document(sessions: &Sessions, counters: &Counters) -> String {
    let (transport, pending, admission) = counters.now();
    let mut doc = serde_json::json!({
        "transport": transport,
        "sessions": sessions.list(),
        "pending_handshakes": pending,
        "admission": admission,
    });
    // Over TCP, the records its sessions rejected, by reason, ended sessions included (an
    // MQTT instance counts them among its own counters).
    if let Counters::Tcp(_) = counters {
        doc["rejected"] = serde_json::json!(sessions.rejected());
    }
    doc.to_string()
}

/// Serves the control socket at `path` until the returned task is aborted; the socket file is
/// replaced if no server answers on it, refused if one does.
pub fn serve(
    path: &Path,
    sessions: Sessions,
    counters: Counters,
) -> Result<tokio::task::JoinHandle<()>, CliError> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(local_io(
            path,
            "control socket in use by another server:",
            std::io::Error::from(std::io::ErrorKind::AddrInUse),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| local_io(path, "cannot create the control socket", e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| local_io(path, "cannot restrict the control socket", e))?;
    tracing::info!(path = %path.display(), "control socket (secchan status)");
    Ok(tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let doc = document(&sessions, &counters);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = stream.write_all(doc.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }))
}

/// `secchan status`.
pub fn run(args: StatusArgs) -> Result<(), CliError> {
    let path = args.control_socket.unwrap_or_else(status_path);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        local_io(
            &path,
            "no server answers on (is it running, with this --control-socket?)",
            e,
        )
    })?;
    let mut doc = String::new();
    stream
        .read_to_string(&mut doc)
        .map_err(|e| local_io(&path, "cannot read", e))?;
    if args.json {
        println!("{doc}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&doc).map_err(|e| {
        CliError::LocalIo(std::io::Error::other(format!(
            "{}: not a secchan server's status: {e}",
            path.display()
        )))
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let sessions = v["sessions"].as_array().cloned().unwrap_or_default();
    println!(
        "{} sessions, {} handshakes pending{} ({})",
        sessions.len(),
        v["pending_handshakes"],
        match &v["rejected"] {
            serde_json::Value::Null => String::new(),
            r => format!(", {} records rejected", rejected(r)),
        },
        v["transport"].as_str().unwrap_or("?")
    );
    for s in sessions {
        let age = |k: &str| now.saturating_sub(s[k].as_u64().unwrap_or(now));
        println!(
            "{}\n  fingerprint {}\n  peer {}  {} + {}{}\n  up {} s, last message {} s ago, {} messages, {} bytes\n  keys {} s old, {} key updates, {} records rejected",
            s["device"].as_str().unwrap_or("?"),
            s["fingerprint"].as_str().unwrap_or("(anonymous)"),
            s["peer"].as_str().unwrap_or("?"),
            s["suite"].as_str().unwrap_or("?"),
            s["aead"].as_str().unwrap_or("?"),
            if s["resumed"].as_bool() == Some(true) { ", resumed" } else { "" },
            age("established"),
            age("last_seen"),
            s["messages"],
            s["bytes"],
            age("keys_installed"),
            s["key_updates"],
            rejected(&s["rejected"]),
        );
    }
    Ok(())
}

/// A count of rejected records by reason, as text: "0", or "3 (replayed 2, forged 1)".
fn rejected(by_reason: &serde_json::Value) -> String {
    let nonzero: Vec<(&String, u64)> = by_reason
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, n)| Some((k, n.as_u64()?)).filter(|(_, n)| *n > 0))
        .collect();
    let total: u64 = nonzero.iter().map(|(_, n)| n).sum();
    if nonzero.is_empty() {
        return total.to_string();
    }
    let parts: Vec<String> = nonzero.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{total} ({})", parts.join(", "))
}
