//! A real HAProxy for tests: TCP mode on a free loopback port in front of the given backends,
//! with fast health checks (a backend that goes down is out of the rotation within a few
//! hundred milliseconds, and back in as soon as it accepts again), stopped on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Haproxy {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

/// Finds the `haproxy` binary (Debian installs it in /usr/sbin).
fn binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the scale-out tests need HAProxy, which is not installed: run \
                 `apt-get install haproxy` (Debian/Ubuntu), or `bash scripts/test.sh`, which \
                 installs it"
            )
        })
}

impl Haproxy {
    /// Starts HAProxy balancing TCP connections over `backends` (loopback ports).
    pub fn start(backends: &[u16]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free loopback port");
        let dir =
            std::env::temp_dir().join(format!("secchan-haproxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!("    server s{i} 127.0.0.1:{p} check inter 100ms fall 1 rise 1\n")
            })
            .collect();
        // The same configuration docs/deployment.md shows, with test timings.
        let config = format!(
            "global\n    maxconn 1000\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 10m\n    \
             timeout server 10m\n    retries 3\n    option redispatch\n\
             listen secchan\n    bind 127.0.0.1:{port}\n    balance roundrobin\n{servers}"
        );
        std::fs::write(dir.join("haproxy.cfg"), config).unwrap();
        let child = Command::new(binary())
            .arg("-db")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
            .spawn()
            .expect("cannot start haproxy");
        let mut h = Self { child, port, dir };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Some(status) = h.child.try_wait().unwrap() {
                panic!("haproxy exited with {status}:\n{}", h.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "haproxy did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// `127.0.0.1:PORT`, where devices connect.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What HAProxy logged (health-check transitions, errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
