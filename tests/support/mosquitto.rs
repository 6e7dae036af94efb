//! A real Mosquitto broker for tests: started on a free loopback port with a temporary
//! configuration, restarted on demand, stopped on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
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
        let mut m = Self::configure(false);
        m.spawn();
        m
    }

    /// Starts a broker that requires user `user` with password `password`.
    pub fn start_with_password(user: &str, password: &str) -> Self {
        Self::start_with_users(&[(user, password)])
    }

    /// Starts a broker that requires one of these accounts (user, password).
    pub fn start_with_users(users: &[(&str, &str)]) -> Self {
        let mut m = Self::configure(true);
        m.set_users(users);
        m.spawn();
        m
    }

    /// Starts a broker that requires one of these accounts and applies `acl` (the text of a
    /// Mosquitto ACL file).
    pub fn start_with_acl(users: &[(&str, &str)], acl: &str) -> Self {
        let mut m = Self::configure(true);
        std::fs::write(m.dir.join("acl"), acl).unwrap();
        m.append_config(&format!("acl_file {}\n", m.dir.join("acl").display()));
        m.set_users(users);
        m.spawn();
        m
    }

    /// Starts a broker whose listener speaks TLS with `tls`'s server certificate, requiring
    /// a client certificate (its CN becoming the user name) if `require_certificate`, else
    /// one of `users`.
    pub fn start_with_tls(
        tls: &TlsFiles,
        users: &[(&str, &str)],
        require_certificate: bool,
    ) -> Self {
        let mut m = Self::configure(!require_certificate);
        let mut extra = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\n",
            tls.ca.display(),
            tls.server_cert.display(),
            tls.server_key.display()
        );
        if require_certificate {
            extra.push_str(
                "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n",
            );
        }
        m.append_config(&extra);
        if !require_certificate {
            m.set_users(users);
        }
        m.spawn();
        m
    }

    fn append_config(&self, text: &str) {
        let path = self.dir.join("mosquitto.conf");
        let mut conf = std::fs::read_to_string(&path).unwrap();
        conf.push_str(text);
        std::fs::write(path, conf).unwrap();
    }

    /// A broker's directory and configuration, on a free loopback port.
    fn configure(passwords: bool) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "secchan-mosquitto-{}-{port}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let access = if passwords {
            format!(
                "allow_anonymous false\npassword_file {}",
                dir.join("passwords").display()
            )
        } else {
            "allow_anonymous true".to_string()
        };
        // The listener first: the TLS and ACL settings appended later belong to it.
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!("listener {port} 127.0.0.1\n{access}\npersistence false\nlog_dest stderr\n"),
        )
        .unwrap();
        Self {
            child: None,
            port,
            dir,
            binary: binary(),
        }
    }

    /// Replaces the accounts of a broker started with [`start_with_users`](Self::start_with_users).
    /// A running broker reloads them (SIGHUP); connections already open stay.
    pub fn set_users(&mut self, users: &[(&str, &str)]) {
        let file = self.dir.join("passwords");
        let _ = std::fs::remove_file(&file);
        std::fs::write(&file, "").unwrap();
        let tool = self.binary.with_file_name("mosquitto_passwd");
        let tool = if tool.is_file() {
            tool
        } else {
            PathBuf::from("mosquitto_passwd")
        };
        for (user, password) in users {
            let status = Command::new(&tool)
                .arg("-b")
                .arg(&file)
                .args([user, password])
                .status()
                .unwrap_or_else(|e| {
                    panic!("cannot run mosquitto_passwd ({e}): run `apt-get install mosquitto`")
                });
            assert!(status.success(), "mosquitto_passwd failed");
        }
        // Mosquitto reads the file after dropping privileges when started as root.
        let _ = Command::new("chmod").arg("0644").arg(&file).status();
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-HUP", &child.id().to_string()])
                .status();
        }
    }

    /// The broker URL for secchan.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker URL for secchan over TLS.
    pub fn tls_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// The broker's directory (for files a test writes beside its configuration).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// What the broker logged so far (connections name each client id and user).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
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

    /// Starts a broker that keeps its sessions (and the messages queued for them) across a
    /// [`stop`](Self::stop) and [`spawn`](Self::spawn).
    pub fn start_persistent() -> Self {
        let mut m = Self::configure(false);
        let conf = std::fs::read_to_string(m.dir.join("mosquitto.conf")).unwrap();
        let conf = conf.replace(
            "persistence false\n",
            &format!(
                "persistence true\npersistence_location {}/\n",
                m.dir.display()
            ),
        );
        std::fs::write(m.dir.join("mosquitto.conf"), conf).unwrap();
        // Mosquitto started as root writes its database as the mosquitto user.
        let _ = Command::new("chmod").arg("0777").arg(&m.dir).status();
        m.spawn();
        m
    }

    /// Stops the broker with SIGTERM, so that a persistent one saves its sessions.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
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

/// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files
/// in `dir`.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Generates the files (rcgen); the client certificate's CN is `client_cn`.
    pub fn generate(dir: &std::path::Path, name: &str, client_cn: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("secchan test CA {name}"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            (
                pem("CERTIFICATE", cert.der()),
                pem("PRIVATE KEY", &key.serialize_der()),
            )
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()], "127.0.0.1");
        let (client_cert, client_key) = leaf(vec![], client_cn);
        let write = |file: &str, text: &str| {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            ca: write("ca.pem", &pem("CERTIFICATE", ca.der())),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
        }
    }
}

/// DER as a PEM block.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}
