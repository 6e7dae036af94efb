//! `secchan server`'s downlink input: JSON lines on stdin, `{"to":"NAME","data":"..."}` (or
//! `"data_base64"`), each handed to the [`Hub`] for that device's session.

use crate::service::hub::Hub;
use base64::Engine as _;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Longest downlink input line read; a longer one is reported and skipped.
const MAX_LINE: usize = 64 * 1024;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Downlink {
    to: String,
    data: Option<String>,
    data_base64: Option<String>,
}

/// What one input line asks for, or why it cannot be sent.
fn parse(line: &str) -> Result<(String, Vec<u8>), String> {
    let d: Downlink = serde_json::from_str(line)
        .map_err(|e| format!("not a JSON object {{\"to\":NAME,\"data\":TEXT}}: {e}"))?;
    let data = match (d.data, d.data_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("data_base64 is not base64: {e}"))?,
        _ => return Err("give exactly one of \"data\" and \"data_base64\"".into()),
    };
    Ok((d.to, data))
}

/// Reads downlink lines from `input` until it ends; prints one line on stderr for each that
/// is not delivered, saying why.
pub async fn read(input: impl AsyncRead + Unpin, hub: Arc<Hub>) {
    let mut lines = BufReader::new(input);
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        let mut limited = (&mut lines).take(MAX_LINE as u64 + 1);
        match limited.read_until(b'\n', &mut buf).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                eprintln!("secchan server: cannot read downlink input: {e}");
                return;
            }
        }
        number += 1;
        if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
            eprintln!(
                "secchan server: downlink line {number}: longer than {MAX_LINE} bytes: skipped"
            );
            // Skip to the end of the line.
            let mut rest = Vec::new();
            let _ = lines.read_until(b'\n', &mut rest).await;
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let result = parse(text).and_then(|(to, data)| {
            hub.downlink(&to, data)
                .map(|seq| (to, seq))
                .map_err(|e| e.to_string())
        });
        match result {
            Ok((to, seq)) => tracing::debug!(device = %to, seq, "downlink queued"),
            Err(why) => eprintln!("secchan server: downlink line {number} not delivered: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downlink_lines_name_a_device_and_one_kind_of_data() {
        assert_eq!(
            parse(r#"{"to":"pi","data":"on"}"#),
            Ok(("pi".into(), b"on".to_vec()))
        );
        assert_eq!(
            parse(r#"{"to":"pi","data_base64":"/wA="}"#),
            Ok(("pi".into(), vec![0xff, 0])),
        );
        assert!(parse(r#"{"to":"pi"}"#).is_err());
        assert!(parse(r#"{"to":"pi","data":"a","data_base64":"YQ=="}"#).is_err());
        assert!(parse(r#"{"to":"pi","data":"a","x":1}"#).is_err());
        assert!(parse("on").is_err());
    }
}
