//! Running under a service manager and in a shell: systemd readiness and watchdog
//! notifications, shell completions and the man page, all generated from the clap
//! definitions so they never drift from the options.

use super::{Cli, CliError};
use clap::CommandFactory;
use std::time::Duration;

/// Tells systemd (a `Type=notify` unit) that the service is ready, and keeps its watchdog fed
/// for as long as the returned task runs. Without systemd (no `$NOTIFY_SOCKET`) this does
/// nothing.
pub(super) fn notify_ready() -> Option<tokio::task::JoinHandle<()>> {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    // Ping at half the watchdog interval: a hung runtime stops pinging and systemd restarts it.
    let every = Duration::from_micros(usec / 2);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    }))
}

/// Tells systemd the service is stopping (drain in progress).
pub(super) fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// `secchan completions SHELL`: the completion script on stdout.
pub(super) fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "secchan", &mut std::io::stdout());
    Ok(())
}

/// `secchan man`: the secchan(1) page (roff) on stdout; with `dir`, that page and one per
/// subcommand (secchan-server(1), ...) written into `dir`.
pub(super) fn man(dir: Option<&std::path::Path>) -> Result<(), CliError> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        return Ok(());
    };
    let write = |name: String, page: clap::Command| -> Result<(), CliError> {
        let path = dir.join(format!("{name}.1"));
        let mut bytes = Vec::new();
        clap_mangen::Man::new(page).render(&mut bytes)?;
        std::fs::write(&path, bytes).map_err(|source| CliError::Write { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| CliError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("secchan-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .version(env!("CARGO_PKG_VERSION"));
        write(name, page)?;
    }
    write("secchan".into(), cmd)
}
