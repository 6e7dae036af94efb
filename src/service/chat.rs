//! `secchan chat` in line mode: what a person types (`@NAME message`, `/crypto`) and the plain
//! text lines it prints, one event per line, for scripts and screen readers.

use super::peer::PeerStats;

/// One typed line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Typed<'a> {
    /// `@NAME message`: send end to end.
    Send(&'a str, &'a [u8]),
    /// `/crypto`: print every session's cryptography.
    Crypto,
    /// Anything else: print how to use it.
    Help,
}

/// What a typed line asks for.
pub fn parse(line: &[u8]) -> Typed<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line == b"/crypto" {
        return Typed::Crypto;
    }
    let Some(rest) = line.strip_prefix(b"@") else {
        return Typed::Help;
    };
    let split = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    let (name, message) = rest.split_at(split);
    match std::str::from_utf8(name) {
        Ok(name) if crate::delivery::valid_peer_name(name) && message.len() > 1 => {
            Typed::Send(name, &message[1..])
        }
        _ => Typed::Help,
    }
}

/// How to use line mode.
pub const HELP: &str =
    "* type @NAME MESSAGE to send end to end; /crypto shows each session's cryptography";

/// A received message: `<from> text  [e2e SHA256:...]` or `[via the server]`.
pub fn message_line(from: &str, fingerprint: &str, e2e: bool, data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let how = if e2e { "end to end" } else { "from the server" };
    format!("<{from}> {text}  [{how}, {fingerprint}]")
}

/// One session's cryptography on one line.
pub fn crypto_line(me: &str, s: &PeerStats) -> String {
    let phase = s.phase.name();
    let role = if s.initiator {
        "we started it"
    } else {
        "it started"
    };
    let vouched = s
        .vouched
        .as_ref()
        .map_or("not yet".to_string(), |v| v.to_string());
    let time = s
        .handshake_time
        .map_or("-".to_string(), |t| format!("{} ms", t.as_millis()));
    let mut line = format!(
        "* {peer}: {phase} ({role}), end to end via the server's relay; suite {suite}, AEAD {aead}; \
         peer key {fp} ({vouched}); our key {me}; records sent {sent}, received {recv}; \
         key updates received {ku}; records rejected {rej}; handshake {hb} B in {time}; \
         sessions {n}; awaiting acknowledgement {und}",
        peer = s.peer,
        suite = s.suite.unwrap_or("-"),
        aead = s.aead.unwrap_or("-"),
        fp = s.fingerprint.as_deref().unwrap_or("unproven"),
        sent = s.records_sent,
        recv = s.records_received,
        ku = s.key_updates_received,
        rej = s.rejected,
        hb = s.handshake_bytes,
        n = s.sessions,
        und = s.undelivered,
    );
    if let Some(e) = &s.last_error {
        line.push_str("; last error: ");
        line.push_str(e);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_lines_address_a_peer_or_ask_for_the_cryptography() {
        assert_eq!(parse(b"@b hello there"), Typed::Send("b", b"hello there"));
        assert_eq!(parse(b"/crypto"), Typed::Crypto);
        assert_eq!(parse(b"@b"), Typed::Help);
        assert_eq!(parse(b"@ hi"), Typed::Help);
        assert_eq!(parse(b"hello"), Typed::Help);
    }
}
