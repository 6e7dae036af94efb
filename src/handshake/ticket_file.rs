//! The ticket key file (protocol.md §3.4): ticket keys that survive a restart, and that several
//! server instances given copies of one file share. The only part of resumption that touches
//! the file system; the handshake itself never calls it.
//!
//! ```text
//! secchan-ticket-keys-v1
//! lifetime 86400
//! period 20254
//! previous <base64 of 32 bytes>
//! current <base64 of 32 bytes>
//! ```
//!
//! `current` is always the ratchet of `previous` (key_{p+1} = Expand(key_p, "ticket key
//! ratchet", 32)). Loading ratchets forward to the period the time passed in falls in and
//! rewrites the file (temporary file, fsync, rename), so keys of earlier periods leave the disk.

use super::ticket::{lifetime_secs, period_of, ratchet, TicketKeyError, TicketKeys};
use crate::crypto::kdf::{Secret, HASH_LEN};
use crate::crypto::random::Random;
use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const HEADER: &str = "secchan-ticket-keys-v1";

/// Loads the ticket keys from `path`, ratcheted forward to `wall_now`'s period, and rewrites
/// the file if the period moved; creates it (mode 0600) with random keys if it does not
/// exist. A file that group or others can read, one made for another `lifetime`, or a
/// malformed one is refused. A file from a later period than `wall_now` (a clock set back) is
/// used as it is.
pub fn load_or_create(
    path: &Path,
    lifetime: Duration,
    wall_now: SystemTime,
    rng: &mut dyn Random,
) -> Result<TicketKeys, TicketKeyError> {
    let secs = lifetime_secs(lifetime)?;
    let period = period_of(wall_now, secs);
    let text = match read_private(path) {
        Ok(text) => text,
        Err(TicketKeyError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut previous = Zeroizing::new([0u8; HASH_LEN]);
            rng.fill(previous.as_mut())?;
            let current = ratchet(&previous);
            let keys = TicketKeys::from_pair(period, previous, current);
            store(path, &keys, secs)?;
            return Ok(keys);
        }
        Err(e) => return Err(e),
    };
    let (file_lifetime, mut keys) = parse(&text)?;
    if file_lifetime != secs {
        return Err(TicketKeyError::LifetimeMismatch {
            file: file_lifetime,
            configured: secs,
        });
    }
    if keys.period() < period {
        keys.advance_to(period);
        store(path, &keys, secs)?;
    }
    Ok(keys)
}

fn read_private(path: &Path) -> Result<Zeroizing<String>, TicketKeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TicketKeyError::Permissions { mode });
        }
    }
    Ok(Zeroizing::new(std::fs::read_to_string(path)?))
}

fn key_line(value: Option<&str>, name: &'static str) -> Result<Secret, TicketKeyError> {
    let bytes = Zeroizing::new(
        STANDARD_NO_PAD
            .decode(value.ok_or(TicketKeyError::Format(name))?)
            .map_err(|_| TicketKeyError::Format(name))?,
    );
    let key: [u8; HASH_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| TicketKeyError::Format(name))?;
    Ok(Zeroizing::new(key))
}

fn parse(text: &str) -> Result<(u32, TicketKeys), TicketKeyError> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(TicketKeyError::Format(
            "first line is not secchan-ticket-keys-v1",
        ));
    }
    let mut field = |name: &'static str| {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(' '))
            .ok_or(TicketKeyError::Format(name))
    };
    let lifetime = field("lifetime")?
        .parse::<u32>()
        .map_err(|_| TicketKeyError::Format("lifetime"))?;
    let period = field("period")?
        .parse::<u64>()
        .map_err(|_| TicketKeyError::Format("period"))?;
    let previous = key_line(field("previous").ok(), "previous")?;
    let current = key_line(field("current").ok(), "current")?;
    if lines.next().is_some_and(|l| !l.is_empty()) {
        return Err(TicketKeyError::Format("text after the current key"));
    }
    if !bool::from(ratchet(&previous).ct_eq(current.as_ref())) {
        return Err(TicketKeyError::Format(
            "current key is not the ratchet of the previous one",
        ));
    }
    Ok((lifetime, TicketKeys::from_pair(period, previous, current)))
}

fn format(keys: &TicketKeys, lifetime: u32) -> Zeroizing<String> {
    let b64 = |k: &Secret| Zeroizing::new(STANDARD_NO_PAD.encode(k.as_ref()));
    let previous = keys.previous().map(b64).unwrap_or_default();
    Zeroizing::new(format!(
        "{HEADER}\nlifetime {lifetime}\nperiod {}\nprevious {}\ncurrent {}\n",
        keys.period(),
        previous.as_str(),
        b64(keys.current()).as_str()
    ))
}

/// Creates a new file only its owner can read; fails if `path` exists (or is a symlink).
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// Writes the file atomically: a new temporary file (mode 0600, never through a symlink),
/// fsync, rename over `path`, fsync of the directory.
fn store(path: &Path, keys: &TicketKeys, lifetime: u32) -> Result<(), TicketKeyError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut file = create_private(&tmp)?;
    file.write_all(format(keys, lifetime).as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::random::OsRandom;
    use std::time::UNIX_EPOCH;

    const DAY: u64 = 86_400;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("secchan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn day(n: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(n * DAY + 7)
    }

    fn load(path: &Path, n: u64) -> Result<TicketKeys, TicketKeyError> {
        load_or_create(path, Duration::from_secs(DAY), day(n), &mut OsRandom)
    }

    #[cfg(unix)]
    #[test]
    fn created_0600_and_group_readable_refused() {
        use std::os::unix::fs::PermissionsExt;
        let path = dir("tk-mode").join("ticket.keys");
        let keys = load(&path, 10).unwrap();
        assert_eq!(keys.period(), 10);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            load(&path, 10),
            Err(TicketKeyError::Permissions { mode: 0o640 })
        ));
    }

    #[test]
    fn copies_of_one_file_derive_the_same_keys_and_old_keys_leave_the_file() {
        let d = dir("tk-copies");
        let (a, b) = (d.join("a.keys"), d.join("b.keys"));
        let first = load(&a, 10).unwrap();
        let text_10 = std::fs::read_to_string(&a).unwrap();
        std::fs::copy(&a, &b).unwrap();
        let key_10 = STANDARD_NO_PAD.encode(first.current().as_ref());
        let prev_10 = STANDARD_NO_PAD.encode(first.previous().unwrap().as_ref());
        // Instance a restarts in period 11, instance b in period 13 then 13 again.
        let a11 = load(&a, 11).unwrap();
        let b13 = load(&b, 13).unwrap();
        assert_eq!(*load(&b, 13).unwrap().current(), *b13.current());
        let mut a13 = a11;
        a13.advance_to(13);
        assert_eq!(*a13.current(), *b13.current());
        assert_eq!(*a13.previous().unwrap(), *b13.previous().unwrap());
        // The rewritten file holds periods 12 and 13 only.
        let text_13 = std::fs::read_to_string(&b).unwrap();
        assert!(text_13.contains("period 13\n"));
        assert!(text_10.contains(&key_10));
        assert!(!text_13.contains(&key_10) && !text_13.contains(&prev_10));
        assert!(!d.join("b.keys.tmp").exists());
    }

    #[test]
    fn lifetime_and_format_are_checked() {
        let d = dir("tk-format");
        let path = d.join("t.keys");
        load(&path, 10).unwrap();
        assert!(matches!(
            load_or_create(&path, Duration::from_secs(3600), day(10), &mut OsRandom),
            Err(TicketKeyError::LifetimeMismatch {
                file: 86_400,
                configured: 3600
            })
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        let write = |t: &str| {
            let p = d.join("bad.keys");
            let _ = std::fs::remove_file(&p);
            store_text(&p, t);
            load(&p, 10)
        };
        assert!(matches!(write("nope\n"), Err(TicketKeyError::Format(_))));
        // A current key that is not the ratchet of the previous one.
        let lines: Vec<&str> = text.lines().collect();
        let swapped = format!(
            "{}\n{}\n{}\nprevious {}\ncurrent {}\n",
            lines[0],
            lines[1],
            lines[2],
            &lines[4]["current ".len()..],
            &lines[3]["previous ".len()..]
        );
        assert!(matches!(write(&swapped), Err(TicketKeyError::Format(_))));
        // A file from a later period is used as it is.
        assert_eq!(load(&path, 5).unwrap().period(), 10);
    }

    fn store_text(path: &Path, text: &str) {
        create_private(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
}
