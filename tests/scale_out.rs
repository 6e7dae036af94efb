//! Several `secchan server` instances behind a real HAProxy (TCP mode), writing into one real
//! PostgreSQL: devices stream while the instances are killed (SIGKILL) and restarted in turn;
//! every message ends up in the table exactly once and none is missing, and a device whose
//! instance died resumes its session on the other one (the instances hold copies of one
//! ticket key file). docs/deployment.md describes the same set-up.
#![cfg(feature = "postgres")]

mod cli_support;
mod support;

use cli_support::{bin, free_port, keygen, tempdir, Logged};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use support::haproxy::Haproxy;
use support::postgres::Postgres;

const DEVICES: usize = 3;
const MESSAGES: u32 = 600;

/// One server instance: its port, directory, and the process of its current run.
struct Instance {
    port: u16,
    dir: PathBuf,
    runs: usize,
    process: Option<Logged>,
}

impl Instance {
    fn new(shared: &Path, name: &str) -> Self {
        let dir = shared.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            port: free_port(),
            dir,
            runs: 0,
            process: None,
        }
    }

    /// Starts a run, on the instance's port, and waits until it listens.
    fn start(&mut self, shared: &Path, pg: &Postgres) {
        self.runs += 1;
        let mut c = bin();
        c.args(["server", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--key")
            .arg(shared.join("server.key"))
            .arg("--authorized-devices")
            .arg(shared.join("devices.txt"))
            .args(["--sink", &pg.url(), "--sink-password-file"])
            .arg(shared.join("pg.password"))
            .arg("--ticket-key-file")
            .arg(self.dir.join("ticket.key"))
            .stdout(Stdio::null());
        let mut p = Logged::spawn(c, &self.log(self.runs));
        p.listening();
        self.process = Some(p);
    }

    /// Kills the current run as a crash would.
    fn kill(&mut self) {
        self.process.take();
    }

    fn log(&self, run: usize) -> PathBuf {
        self.dir.join(format!("run{run}.log"))
    }

    fn text(&self, run: usize) -> String {
        std::fs::read_to_string(self.log(run)).unwrap_or_default()
    }
}

#[test]
fn instances_killed_in_turn_behind_haproxy_lose_nothing_and_write_nothing_twice() {
    let shared = tempdir("scale-out");
    let pg = Postgres::start();
    pg.password_file(&shared.join("pg.password"));
    let server_fp = keygen(&shared.join("server.key"));
    let mut authorized = String::new();
    for i in 0..DEVICES {
        let fp = keygen(&shared.join(format!("device{i}.key")));
        authorized.push_str(&format!("{fp} device-{i}\n"));
    }
    std::fs::write(shared.join("devices.txt"), authorized).unwrap();

    let mut a = Instance::new(&shared, "a");
    let mut b = Instance::new(&shared, "b");
    a.start(&shared, &pg);
    // Copies of one ticket key file: either instance accepts the other's tickets.
    std::fs::copy(a.dir.join("ticket.key"), b.dir.join("ticket.key")).unwrap();
    b.start(&shared, &pg);
    let lb = Haproxy::start(&[a.port, b.port]);

    let mut devices = Vec::new();
    let mut writers = Vec::new();
    for i in 0..DEVICES {
        let mut c = bin();
        c.current_dir(&shared)
            .args([
                "device",
                "--connect",
                &lb.addr(),
                "--server-key",
                &server_fp,
                "--key",
            ])
            .arg(shared.join(format!("device{i}.key")))
            .args(["--ack-timeout", "2", "--give-up-after", "120"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut d = Logged::spawn(c, &shared.join(format!("device{i}.log")));
        let mut input = d.child.stdin.take().unwrap();
        writers.push(std::thread::spawn(move || {
            for n in 0..MESSAGES {
                writeln!(input, "{{\"n\":{n}}}").unwrap();
                input.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
        devices.push(d);
    }
    // Mid-stream: each instance crashes and comes back in turn.
    std::thread::sleep(Duration::from_millis(800));
    a.kill();
    std::thread::sleep(Duration::from_millis(500));
    a.start(&shared, &pg);
    std::thread::sleep(Duration::from_millis(700));
    b.kill();
    std::thread::sleep(Duration::from_millis(500));
    b.start(&shared, &pg);
    for w in writers {
        w.join().unwrap();
    }
    for (i, d) in devices.iter_mut().enumerate() {
        let status = d.child.wait().unwrap();
        assert!(
            status.success(),
            "device {i}: {}\nA: {}\nB: {}\nHAProxy: {}",
            d.text(),
            a.text(1),
            b.text(1),
            lb.log()
        );
    }

    let rows = pg.query(
        "SELECT device, count(*), count(DISTINCT seq), min(seq), max(seq), \
         count(*) FILTER (WHERE (payload->>'n')::bigint = seq) \
         FROM secchan_messages GROUP BY device ORDER BY device",
    );
    let last = MESSAGES - 1;
    let expected: Vec<String> = (0..DEVICES)
        .map(|i| format!("device-{i}|{MESSAGES}|{MESSAGES}|0|{last}|{MESSAGES}"))
        .collect();
    assert_eq!(rows.lines().collect::<Vec<_>>(), expected);
    // The devices of the instance killed first went to the other one, and resumed there with
    // the tickets the first had issued.
    assert!(
        b.text(1).contains("resumed=true"),
        "no resumption on B after A was killed:\n{}",
        b.text(1)
    );
}
