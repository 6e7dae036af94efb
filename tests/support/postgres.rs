//! A real PostgreSQL for tests: a throwaway cluster (initdb) in a temporary directory,
//! listening on a free loopback port with password (SCRAM) authentication, started and stopped
//! with pg_ctl, removed on drop. PostgreSQL refuses to run as root: a test running as root
//! runs its programs as the `postgres` user that Debian's package creates.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The user the sink connects as, and its password.
pub const USER: &str = "secchan";
pub const PASSWORD: &str = "test-password-for-the-sink";

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// `Some("postgres")` when the test runs as root.
    run_as: Option<&'static str>,
}

const INSTALL: &str = "the PostgreSQL tests need a PostgreSQL server, which is not installed: \
                       run `apt-get install postgresql` (Debian/Ubuntu), or `bash scripts/test.sh`, \
                       which installs it";

/// The directory of initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/N/bin.
fn bin_dir() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::split_paths(&path).find(|d| d.join("initdb").is_file()) {
        return std::fs::canonicalize(dir.join("initdb"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("{INSTALL}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn is_root() -> bool {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .expect("cannot run id");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

impl Postgres {
    /// Creates a cluster and starts it.
    pub fn start() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let bin = bin_dir();
        let run_as = is_root().then_some("postgres");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "secchan-postgres-{}-{port}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pg = Self {
            port,
            dir,
            bin,
            run_as,
        };
        if let Some(user) = run_as {
            let status = Command::new("chown")
                .arg(user)
                .arg(&pg.dir)
                .status()
                .unwrap();
            assert!(
                status.success(),
                "cannot give {} to user {user}: running as root, the tests run PostgreSQL as \
                 that user, which Debian's postgresql package creates ({INSTALL})",
                pg.dir.display()
            );
        }
        let pwfile = pg.dir.join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        let _ = Command::new("chmod").arg("0644").arg(&pwfile).status();
        let out = pg.run(pg.bin.join("initdb"), |c| {
            c.arg("-D")
                .arg(pg.data())
                .args([
                    "-U",
                    USER,
                    "--auth=scram-sha-256",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ])
                .arg(format!("--pwfile={}", pwfile.display()));
        });
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 16MB\nmax_connections = 40\n",
            pg.dir.display()
        );
        let mut existing = std::fs::read_to_string(pg.data().join("postgresql.conf")).unwrap();
        existing.push_str(&conf);
        std::fs::write(pg.data().join("postgresql.conf"), existing).unwrap();
        pg.spawn();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs a PostgreSQL program (as the `postgres` user when root).
    fn run(&self, program: PathBuf, args: impl FnOnce(&mut Command)) -> Output {
        let mut c = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        args(&mut c);
        c.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e} ({INSTALL})", program.display()))
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        self.run(self.bin.join("pg_ctl"), |c| {
            c.arg("-D").arg(self.data()).args(args);
        })
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn spawn(&self) {
        let log = self.dir.join("postgres.log");
        let out = self.pg_ctl(&["-w", "-t", "30", "-l", log.to_str().unwrap(), "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server as a crash would (immediate shutdown: no checkpoint, connections cut).
    pub fn kill(&self) {
        let out = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
        assert!(out.status.success(), "pg_ctl stop failed: {}", text(&out));
    }

    /// The sink URL (without the password, which the server gets from a file).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` with psql and returns its unaligned output, one row a line, `|` between
    /// columns.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e} ({INSTALL})"));
        assert!(out.status.success(), "psql {sql:?} failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes the password to `path` (mode 0600) for `--sink-password-file`.
    pub fn password_file(&self, path: &Path) {
        std::fs::write(path, format!("{PASSWORD}\n")).unwrap();
        let _ = Command::new("chmod").arg("0600").arg(path).status();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
