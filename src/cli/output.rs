//! Where `secchan server` writes received messages: one JSON line each on stdout, and with
//! `--out FILE` appended to FILE as well (created with mode 0600: telemetry can be private).

use super::CliError;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// The server's output.
pub(super) struct Output {
    stdout: tokio::io::Stdout,
    file: Option<(PathBuf, std::fs::File)>,
}

impl Output {
    /// Stdout, plus `path` opened for appending.
    pub(super) async fn open(path: Option<&Path>) -> Result<Self, CliError> {
        let file = match path {
            None => None,
            Some(path) => {
                let mut options = std::fs::OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let f = options.open(path).map_err(|source| CliError::Write {
                    path: path.to_path_buf(),
                    source,
                })?;
                Some((path.to_path_buf(), f))
            }
        };
        Ok(Self {
            stdout: tokio::io::stdout(),
            file,
        })
    }

    /// Writes one line (a newline is added) and flushes it.
    pub(super) async fn write_line(&mut self, line: &str) -> Result<(), CliError> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.stdout.write_all(&bytes).await?;
        self.stdout.flush().await?;
        if let Some((path, f)) = &mut self.file {
            // A line is small: a blocking append is shorter than a hand-off to a thread.
            f.write_all(&bytes)
                .and_then(|()| f.flush())
                .map_err(|source| CliError::Write {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}
