//! A real Mosquitto broker for tests: started on a free loopback port with a temporary
//! configuration, restarted on demand, stopped on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the broker may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    binary: PathBuf,
}

/// Finds the `mosquitto` binary (Debian installs it in /usr/sbin, often not on a user's PATH).
fn binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the MQTT tests need the Mosquitto broker, which is not installed: \
                 run `apt-get install mosquitto mosquitto-clients` (Debian/Ubuntu)"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl Mosquitto {
    /// Starts a broker on a free loopback port (anonymous access, no persistence).
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts a broker that requires user `user` with password `password`.
    pub fn start_with_password(user: &str, password: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("secchan-mosquitto-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("passwords");
        let tool = binary().with_file_name("mosquitto_passwd");
        let tool = if tool.is_file() {
            tool
        } else {
            PathBuf::from("mosquitto_passwd")
        };
        let status = Command::new(&tool)
            .args(["-b", "-c"])
            .arg(&file)
            .args([user, password])
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run mosquitto_passwd ({e}): run `apt-get install mosquitto`")
            });
        assert!(status.success(), "mosquitto_passwd failed");
        // Mosquitto reads the file after dropping privileges when started as root.
        let _ = Command::new("chmod").arg("0644").arg(&file).status();
        let broker = Self::start_with(&format!("password_file {}", file.display()));
        // Read at start; not needed afterwards.
        let _ = std::fs::remove_dir_all(&dir);
        broker
    }

    /// Starts a broker with extra configuration lines.
    pub fn start_with(extra: &str) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("secchan-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let anonymous = if extra.contains("password_file") {
            "false"
        } else {
            "true"
        };
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous {anonymous}\npersistence false\n\
                 log_dest stderr\n{extra}\n"
            ),
        )
        .unwrap();
        let mut m = Self {
            child: None,
            port,
            dir,
            binary: binary(),
        };
        m.spawn();
        m
    }

    /// The broker URL for secchan.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts the broker again after [`kill`](Self::kill), on the same port.
    pub fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("mosquitto.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log =
                    std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
                panic!("mosquitto exited with {status}:\n{log}");
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "mosquitto did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker (like a crash: no clean disconnects).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the broker and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
