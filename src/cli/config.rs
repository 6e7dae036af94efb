//! `--config FILE` for `secchan server` and `secchan device`: a TOML file whose keys are the
//! command's long options (`listen = "0.0.0.0:4433"`, `max-sessions = 500`,
//! `allow-any-device = true`, `group = ["a", "b"]`). The file's options go in front of the
//! command line's, and an option given on the command line replaces the file's (the whole
//! list, for a repeatable one). `--print-config` prints the effective configuration as TOML.
//!
//! Keys are checked against the command's own options, so the file can hold exactly what the
//! command line can, and a typo is an error naming the file and the key.

use super::{Cli, CliError};
use clap::CommandFactory;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The subcommands that take `--config`.
const CONFIGURABLE: [&str; 2] = ["server", "device"];
/// Longest configuration file read.
const MAX_CONFIG: u64 = 1 << 20;
/// Options never taken from, or printed into, a configuration file.
const NOT_IN_FILE: [&str; 4] = ["config", "print-config", "help", "version"];
/// Options whose values are secrets: not printed by `--print-config`.
const SECRET: [&str; 1] = ["enroll-token"];

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It is not TOML, or not a table of options.
    #[error("configuration file {path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// `args` (the process's arguments) with the options of `--config FILE` inserted after the
/// subcommand, for every option the command line does not give itself.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, CliError> {
    let Some(sub) = args
        .get(1)
        .and_then(|a| a.to_str())
        .filter(|a| CONFIGURABLE.contains(a))
    else {
        return Ok(args);
    };
    let Some(path) = config_path(&args[2..]) else {
        return Ok(args);
    };
    let text = read(&path)?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format_err(&path, e.message().to_string()))?;
    let command = Cli::command();
    let options = command
        .find_subcommand(sub)
        .map(|c| {
            c.get_arguments()
                .filter_map(|a| a.get_long())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut from_file = Vec::new();
    for (key, value) in &table {
        if !options.contains(&key.as_str()) || NOT_IN_FILE.contains(&key.as_str()) {
            return Err(format_err(
                &path,
                format!("`{key}` is not an option of `secchan {sub}` (see `secchan {sub} --help`)"),
            )
            .into());
        }
        if given(&args[2..], key) {
            continue;
        }
        push_option(&mut from_file, key, value).map_err(|reason| format_err(&path, reason))?;
    }
    let mut out = args[..2].to_vec();
    out.extend(from_file);
    out.extend(args[2..].iter().cloned());
    Ok(out)
}

fn format_err(path: &Path, reason: String) -> ConfigError {
    ConfigError::Format {
        path: path.to_path_buf(),
        reason,
    }
}

/// The value of `--config` among `args`, if given.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        if a == "--" {
            return None;
        }
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// Whether the command line gives `--key` itself.
fn given(args: &[OsString], key: &str) -> bool {
    let flag = format!("--{key}");
    let with_value = format!("--{key}=");
    args.iter()
        .filter_map(|a| a.to_str())
        .any(|a| a == flag || a.starts_with(&with_value))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG).read_to_string(&mut text))
        .map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(text)
}

/// Appends `--key value` (or just `--key` for `true`, nothing for `false`, one `--key value`
/// per element of an array).
fn push_option(out: &mut Vec<OsString>, key: &str, value: &toml::Value) -> Result<(), String> {
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            _ => Err(format!("`{key}` takes a string or a number here")),
        }
    };
    match value {
        toml::Value::Boolean(true) => out.push(format!("--{key}").into()),
        toml::Value::Boolean(false) => {}
        toml::Value::Array(items) => {
            for item in items {
                out.push(format!("--{key}").into());
                out.push(scalar(item)?.into());
            }
        }
        other => {
            out.push(format!("--{key}").into());
            out.push(scalar(other)?.into());
        }
    }
    Ok(())
}

/// `--print-config`: the effective options of `matches` (the subcommand's) as TOML, defaults
/// included, secrets left out.
pub fn print(sub: &str, matches: &clap::ArgMatches) {
    let mut command = Cli::command();
    command.build();
    let Some(cmd) = command.find_subcommand(sub) else {
        return;
    };
    let mut table = toml::Table::new();
    for arg in cmd.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if NOT_IN_FILE.contains(&long) || SECRET.contains(&long) || arg.is_hide_set() {
            continue;
        }
        let Ok(Some(raw)) = matches.try_get_raw(id) else {
            continue;
        };
        let values: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let value = if !arg.get_action().takes_values() {
            match values.first().map(String::as_str) {
                Some("true") => toml::Value::Boolean(true),
                _ => continue,
            }
        } else if matches!(arg.get_action(), clap::ArgAction::Append) {
            toml::Value::Array(values.into_iter().map(toml::Value::String).collect())
        } else {
            match values.into_iter().next() {
                Some(v) => match v.parse::<i64>() {
                    Ok(n) => toml::Value::Integer(n),
                    Err(_) => toml::Value::String(v),
                },
                None => continue,
            }
        };
        table.insert(long.to_string(), value);
    }
    print!("{table}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn with_file(text: &str, cmdline: &[&str]) -> Result<Vec<String>, CliError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secchan.toml");
        std::fs::write(&path, text).unwrap();
        let mut a = vec![
            "secchan".to_string(),
            "server".to_string(),
            "--config".into(),
            path.display().to_string(),
        ];
        a.extend(cmdline.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        expand(args(&a)).map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn the_file_s_options_come_first_and_the_command_line_wins() {
        let got = with_file(
            "listen = \"0.0.0.0:4433\"\nmax-sessions = 500\nallow-any-device = true\ngroup = [\"a\", \"b\"]\n",
            &["--listen", "127.0.0.1:1"],
        )
        .unwrap();
        assert_eq!(&got[..2], ["secchan", "server"]);
        assert!(
            got.windows(2).any(|w| w == ["--max-sessions", "500"]),
            "{got:?}"
        );
        assert!(got.contains(&"--allow-any-device".to_string()));
        assert_eq!(got.iter().filter(|a| *a == "--group").count(), 2);
        assert_eq!(
            got.iter().filter(|a| *a == "--listen").count(),
            1,
            "the command line's only"
        );
        assert!(got.ends_with(&["--listen".into(), "127.0.0.1:1".into()]));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_key() {
        let e = with_file("lisen = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(
            e.contains("secchan.toml") && e.contains("`lisen` is not an option"),
            "{e}"
        );
        let e = with_file("listen = { a = 1 }\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listen` takes a string or a number"), "{e}");
        let e = with_file("listen = \n", &[]).unwrap_err().to_string();
        assert!(e.contains("secchan.toml"), "{e}");
        let e = with_file("config = \"again\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`config` is not an option"), "{e}");
    }

    #[test]
    fn other_commands_and_no_config_are_left_alone() {
        let a = args(&["secchan", "keygen", "--out", "k"]);
        assert_eq!(expand(a.clone()).unwrap(), a);
        let a = args(&["secchan", "server", "--listen", "x"]);
        assert_eq!(expand(a.clone()).unwrap(), a);
    }
}
