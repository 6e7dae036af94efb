//! `secchan registry`: create, change, list and verify a fleet registry (docs/registry.md).

use super::keys::{load_secret, server_fingerprint};
use super::CliError;
use crate::crypto::identity::{IdentityKey, PublicIdentity};
use crate::crypto::random::OsRandom;
use crate::registry::entry::Op;
use crate::registry::fleet::{Device, Fleet};
use crate::registry::verify::{Head, Verified};
use crate::registry::{file, label, unix_now, EnrollmentToken, RegistryError};
use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Tokens valid longer than this get a warning: a token is a bearer secret until it expires.
const LONG_TOKEN: Duration = Duration::from_secs(7 * 86_400);

/// `secchan registry` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Create a registry signed by the server's key, or by an offline authority key.
    Init {
        #[command(flatten)]
        target: Signed,
    },
    /// Enroll a device by its public key file or fingerprint.
    Enroll {
        #[command(flatten)]
        target: Signed,
        /// The device: its .pub file or its fingerprint (SHA256:...).
        #[arg(long, value_name = "FILE|FINGERPRINT")]
        device: String,
        /// Name to show for the device.
        #[arg(long)]
        name: String,
        /// Group the device belongs to.
        #[arg(long)]
        group: String,
    },
    /// Revoke a device for good: new handshakes are refused, open sessions are closed.
    Revoke {
        #[command(flatten)]
        target: Signed,
        /// The device: fingerprint, .pub file or name.
        device: String,
    },
    /// Give a device a new name.
    Rename {
        #[command(flatten)]
        target: Signed,
        /// The device: fingerprint, .pub file or name.
        device: String,
        /// Its new name.
        name: String,
    },
    /// Move a device to another group.
    Regroup {
        #[command(flatten)]
        target: Signed,
        /// The device: fingerprint, .pub file or name.
        device: String,
        /// Its new group.
        group: String,
    },
    /// Issue a one-time enrollment token; prints it on stdout.
    Token {
        #[command(flatten)]
        target: Signed,
        /// Group the enrolled device joins.
        #[arg(long)]
        group: String,
        /// Validity, e.g. 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        expires: Duration,
        /// Name the enrolled device gets [default: dev- and 8 characters of the token id].
        #[arg(long)]
        name: Option<String>,
        /// Write the token to FILE (created with mode 0600; never overwritten) instead of
        /// stdout, ready for `secchan device --enroll-token-file FILE`.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List devices as a table, or as JSON.
    List {
        #[command(flatten)]
        target: Unsigned,
        /// Only devices of this group.
        #[arg(long)]
        group: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// List enrollment tokens (by id, with their status) instead of devices.
        #[arg(long)]
        tokens: bool,
    },
    /// Verify the whole log and its head; names the first bad entry, or prints the
    /// registry's anchor (entry count and last hash) to keep elsewhere.
    Verify {
        #[command(flatten)]
        target: Unsigned,
        /// An anchor printed by an earlier `verify` (COUNT:HASH): the registry must still
        /// hold that entry unchanged, which detects a rollback to an older copy.
        #[arg(long, value_name = "COUNT:HASH", value_parser = parse_anchor)]
        expect: Option<Head>,
    },
    /// Remove a torn last entry left by an interrupted append (and nothing else).
    Repair {
        #[command(flatten)]
        target: Signed,
    },
}

/// A registry and the key that signs what is appended.
#[derive(Debug, Args)]
pub struct Signed {
    /// The secret key file that signs the registry: the server's, or a registry authority's
    /// kept offline (`secchan keygen`; the server then runs with --registry-authority).
    #[arg(long, visible_alias = "authority-key", value_name = "KEY")]
    key: PathBuf,
    /// The registry file.
    file: PathBuf,
}

/// A registry read without the secret key.
#[derive(Debug, Args)]
pub struct Unsigned {
    /// The server key the registry must belong to: fingerprint or .pub file [default: the
    /// key recorded in entry 1, printed for you to compare].
    #[arg(long, value_name = "FINGERPRINT|FILE")]
    server_key: Option<String>,
    /// The registry file.
    file: PathBuf,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("the validity must be longer than zero".into()),
        Err(e) => Err(format!("{e} (use e.g. 15m, 1h, 7d)")),
    }
}

/// An anchor as `verify` prints it: the entry count, `:`, and the hex SHA-256 of that entry's
/// line.
fn anchor_text(head: &Head) -> String {
    format!("{}:{}", head.count, hex::encode(head.hash))
}

fn parse_anchor(s: &str) -> Result<Head, String> {
    let bad =
        || format!("{s:?} is not an anchor: use COUNT:HASH as `secchan registry verify` prints it");
    let (count, hash) = s.split_once(':').ok_or_else(bad)?;
    let count: u64 = count.parse().map_err(|_| bad())?;
    let hash = hex::decode(hash)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(bad)?;
    match count {
        0 => Err(bad()),
        _ => Ok(Head { count, hash }),
    }
}

fn err(path: &Path) -> impl FnOnce(RegistryError) -> CliError + '_ {
    move |error| CliError::Registry {
        path: path.to_path_buf(),
        error,
    }
}

/// Finds one device by fingerprint, .pub file or name.
fn find<'a>(fleet: &'a Fleet, device: &str) -> Result<&'a Device, RegistryError> {
    let fingerprint = device_fingerprint(device).ok();
    if let Some(d) = fingerprint.as_deref().and_then(|f| fleet.device(f)) {
        return Ok(d);
    }
    let mut named = fleet.devices().filter(|d| d.name == device);
    match (named.next(), named.next()) {
        (Some(d), None) => Ok(d),
        (Some(_), Some(_)) => Err(RegistryError::Ambiguous(device.to_string())),
        _ => Err(RegistryError::NoSuchDevice(device.to_string())),
    }
}

/// A device named by its fingerprint or its .pub file.
fn device_fingerprint(value: &str) -> Result<String, CliError> {
    let bad = |reason: String| CliError::KeyFile {
        path: value.into(),
        reason: format!("{reason} (a device is named by its .pub file or SHA256: fingerprint)"),
    };
    if value.starts_with("SHA256:") {
        return match crate::registry::entry::valid_fingerprint(value) {
            true => Ok(value.to_string()),
            false => Err(bad("not a valid fingerprint".into())),
        };
    }
    let text = std::fs::read_to_string(value).map_err(|e| bad(e.to_string()))?;
    PublicIdentity::from_file_text(&text)
        .map(|p| p.fingerprint())
        .map_err(|e| bad(e.to_string()))
}

/// A device that may still change: not revoked.
fn active<'a>(fleet: &'a Fleet, device: &str) -> Result<&'a Device, RegistryError> {
    let d = find(fleet, device)?;
    match d.revoked_entry {
        Some(_) => Err(RegistryError::Revoked(d.fingerprint.clone())),
        None => Ok(d),
    }
}

fn append(
    target: &Signed,
    make: impl FnOnce(&Fleet) -> Result<Op, RegistryError>,
) -> Result<(IdentityKey, Verified), CliError> {
    let key = load_secret(&target.key)?;
    let v = file::append(&target.file, &key, unix_now(), make).map_err(err(&target.file))?;
    Ok((key, v))
}

fn load(target: &Unsigned) -> Result<Verified, CliError> {
    let v = file::load(&target.file, None).map_err(err(&target.file))?;
    if let Some(expected) = &target.server_key {
        let expected = server_fingerprint(expected)?;
        let found = v.server().fingerprint();
        if found != expected {
            return Err(err(&target.file)(
                crate::registry::VerifyError::WrongServer { expected, found }.into(),
            ));
        }
    }
    Ok(v)
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn print_list(fleet: &Fleet, group: Option<&str>, json: bool) {
    let devices: Vec<&Device> = fleet
        .devices()
        .filter(|d| group.is_none_or(|g| d.group == g))
        .collect();
    let status = |d: &Device| match d.revoked_entry {
        Some(_) => "revoked",
        None => "active",
    };
    if json {
        let rows: Vec<serde_json::Value> = devices
            .iter()
            .map(|d| {
                let mut v = serde_json::to_value(d).unwrap_or_default();
                v["status"] = status(d).into();
                v
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!(
        "{:<24} {:<16} {:<8} {:<20} FINGERPRINT",
        "NAME", "GROUP", "STATUS", "ENROLLED"
    );
    for d in devices {
        println!(
            "{:<24} {:<16} {:<8} {:<20} {}",
            d.name,
            d.group,
            status(d),
            rfc3339(d.enrolled_at),
            d.fingerprint
        );
    }
}

fn print_tokens(fleet: &Fleet, group: Option<&str>, json: bool) {
    let now = unix_now();
    let mut tokens: Vec<_> = fleet
        .tokens()
        .filter(|(_, t)| group.is_none_or(|g| t.group == g))
        .map(|(id, t)| {
            let status = match (&t.used_by, now > t.expires) {
                (Some(_), _) => "used",
                (None, true) => "expired",
                (None, false) => "unused",
            };
            (STANDARD_NO_PAD.encode(id.0), t, status)
        })
        .collect();
    tokens.sort_by_key(|(_, t, _)| t.expires);
    if json {
        let rows: Vec<serde_json::Value> = tokens
            .iter()
            .map(|(id, t, status)| {
                let mut v = serde_json::to_value(t).unwrap_or_default();
                v["id"] = id.as_str().into();
                v["status"] = (*status).into();
                v
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!(
        "{:<24} {:<16} {:<8} {:<20} USED BY",
        "NAME", "GROUP", "STATUS", "EXPIRES"
    );
    for (_, t, status) in tokens {
        println!(
            "{:<24} {:<16} {:<8} {:<20} {}",
            t.name,
            t.group,
            status,
            rfc3339(t.expires),
            t.used_by.as_deref().unwrap_or("-")
        );
    }
}

/// Runs a `secchan registry` subcommand.
pub fn run(command: RegistryCommand) -> Result<(), CliError> {
    match command {
        RegistryCommand::Init { target } => {
            let key = load_secret(&target.key)?;
            file::init(&target.file, &key, unix_now()).map_err(err(&target.file))?;
            println!(
                "created registry {} for server {}",
                target.file.display(),
                key.public().fingerprint()
            );
        }
        RegistryCommand::Enroll {
            target,
            device,
            name,
            group,
        } => {
            let fingerprint = device_fingerprint(&device)?;
            let (name, group) = (label("name", &name), label("group", &group));
            let (name, group) = (
                name.map_err(err(&target.file))?,
                group.map_err(err(&target.file))?,
            );
            append(&target, |fleet| match fleet.device(&fingerprint) {
                Some(d) if d.revoked_entry.is_some() => {
                    Err(RegistryError::Revoked(fingerprint.clone()))
                }
                Some(_) => Err(RegistryError::AlreadyEnrolled(fingerprint.clone())),
                None => Ok(Op::Enroll {
                    device: fingerprint.clone(),
                    name: name.clone(),
                    group: group.clone(),
                    token: None,
                }),
            })?;
            println!("enrolled {fingerprint} as {name} in group {group}");
        }
        RegistryCommand::Revoke { target, device } => {
            let mut done = String::new();
            append(&target, |fleet| {
                let d = active(fleet, &device)?;
                done = format!("revoked {} ({})", d.name, d.fingerprint);
                Ok(Op::Revoke {
                    device: d.fingerprint.clone(),
                })
            })?;
            println!("{done}");
        }
        RegistryCommand::Rename {
            target,
            device,
            name,
        } => {
            let name = label("name", &name).map_err(err(&target.file))?;
            append(&target, |fleet| {
                Ok(Op::Rename {
                    device: active(fleet, &device)?.fingerprint.clone(),
                    name: name.clone(),
                })
            })?;
            println!("renamed {device} to {name}");
        }
        RegistryCommand::Regroup {
            target,
            device,
            group,
        } => {
            let group = label("group", &group).map_err(err(&target.file))?;
            append(&target, |fleet| {
                Ok(Op::Regroup {
                    device: active(fleet, &device)?.fingerprint.clone(),
                    group: group.clone(),
                })
            })?;
            println!("moved {device} to group {group}");
        }
        RegistryCommand::Token {
            target,
            group,
            expires,
            name,
            out,
        } => {
            let group = label("group", &group).map_err(err(&target.file))?;
            let key = load_secret(&target.key)?;
            let token = EnrollmentToken::generate(&mut OsRandom, key.public())
                .map_err(err(&target.file))?;
            let id = token.id();
            let name = match name {
                Some(n) => label("name", &n).map_err(err(&target.file))?,
                None => format!("dev-{}", &hex::encode(id.0)[..8]),
            };
            let now = unix_now();
            let until = now.saturating_add(expires.as_secs().max(1));
            file::append(&target.file, &key, now, |_| {
                Ok(Op::Token {
                    id,
                    group: group.clone(),
                    name: name.clone(),
                    expires: until,
                })
            })
            .map_err(err(&target.file))?;
            match &out {
                Some(path) => super::keys::write_private_new(
                    path,
                    format!("{}\n", token.to_text().as_str()).as_bytes(),
                )?,
                None => println!("{}", token.to_text().as_str()),
            }
            let valid = humantime::format_duration(Duration::from_secs(until - now));
            eprintln!(
                "one-time token for device {name} in group {group}, valid for {valid} (until {}): give it to the device in a file only it can read, as `secchan device --key DEVICE_KEY --enroll-token-file FILE ...`",
                rfc3339(until)
            );
            if expires > LONG_TOKEN {
                tracing::warn!(valid = %valid, "a token is a bearer secret for as long as it is valid: prefer hours to weeks");
            }
        }
        RegistryCommand::List {
            target,
            group,
            json,
            tokens: false,
        } => print_list(&load(&target)?.fleet, group.as_deref(), json),
        RegistryCommand::List {
            target,
            group,
            json,
            tokens: true,
        } => print_tokens(&load(&target)?.fleet, group.as_deref(), json),
        RegistryCommand::Verify { target, expect } => {
            let v = load(&target)?;
            if let Some(anchor) = expect.filter(|a| !v.extends(a)) {
                return Err(err(&target.file)(RegistryError::RolledBack {
                    had: anchor.count,
                    now: v.entries.len(),
                }));
            }
            let head = anchor_text(&v.head());
            println!(
                "{}: {} entries verified, signed by server {}{}",
                target.file.display(),
                v.entries.len(),
                v.server().fingerprint(),
                if target.server_key.is_some() {
                    ""
                } else {
                    " (compare it with your server's fingerprint)"
                }
            );
            match expect {
                Some(a) => println!("anchor: {head} (extends {})", anchor_text(&a)),
                None => println!("anchor: {head} (keep it elsewhere: `secchan registry verify --expect {head} {}` shows whether a later copy extends this one)", target.file.display()),
            }
            if v.head_count < v.entries.len() as u64 {
                println!("note: entry {} is signed but not yet recorded in the head file, which records {} (an append was interrupted, or the head file is an older copy); the next change records it", v.entries.len(), v.head_count);
            }
        }
        RegistryCommand::Repair { target } => {
            let key = load_secret(&target.key)?;
            match file::repair(&target.file, &key).map_err(err(&target.file))? {
                Some((entry, bytes)) => println!(
                    "removed torn entry {entry} ({bytes} bytes) from {}; repeat the command that was interrupted (if none was, the registry was tampered with: compare `secchan registry verify` with the anchor you kept)",
                    target.file.display()
                ),
                None => println!("{}: nothing to repair", target.file.display()),
            }
        }
    }
    Ok(())
}
