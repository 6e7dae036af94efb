//! Every example runs and terminates: examples/stream.rs on its own, examples/device.rs
//! against `secchan server`, and `secchan device` against examples/server.rs (cargo test builds
//! the examples beside the test binaries).

mod cli_support;

use cli_support::{bin, free_port, keygen, run_device, tempdir, Server};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The built example `name` (target/debug/examples/NAME, beside this test's deps directory).
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let path: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join(name);
    assert!(path.exists(), "{} not built", path.display());
    Command::new(path)
}

/// Runs `command` to its end (failing if that takes over 60 s): its exit status and stdout.
fn run_to_end(mut command: Command) -> (std::process::ExitStatus, String) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut pipe = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{command:?} did not terminate");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap())
}

#[test]
fn the_stream_example_closes_cleanly() {
    let (status, out) = run_to_end(example("stream"));
    assert!(status.success(), "{out}");
    assert!(out.contains("server: HUMIDITY 40"), "{out}");
    assert!(out.contains("closed cleanly"), "{out}");
}

#[test]
fn the_device_example_delivers_to_secchan_server() {
    let dir = tempdir("example-device");
    let server_fp = keygen(&dir.join("server.key"));
    keygen(&dir.join("device.key"));
    let mut c = bin();
    c.args([
        "server",
        "--listen",
        "127.0.0.1:0",
        "--allow-any-device",
        "--key",
    ])
    .arg(dir.join("server.key"));
    let mut server = Server::start(c);
    let mut device = example("device");
    device
        .arg(&server.addr)
        .arg(dir.join("device.key"))
        .arg(&server_fp);
    let (status, said) = run_to_end(device);
    assert!(status.success(), "{said}");
    assert!(said.contains("3 readings sent, 3 acknowledged"), "{said}");
    // Acknowledged means written: the server printed all three.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let mut out = String::new();
    server
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.contains("\"seq\"")), "{out}");
}

#[test]
fn secchan_device_delivers_to_the_server_example() {
    let dir = tempdir("example-server");
    let server_fp = keygen(&dir.join("server.key"));
    let device_fp = keygen(&dir.join("device.key"));
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = example("server");
    server
        .arg(&addr)
        .arg(dir.join("server.key"))
        .arg(&device_fp)
        .arg("3");
    let server = std::thread::spawn(move || run_to_end(server));
    // The device tries again (with back-off) until the example listens.
    let out = run_device(
        &dir,
        &[
            "--connect",
            &addr,
            "--server-key",
            &server_fp,
            "--key",
            dir.join("device.key").to_str().unwrap(),
            "--give-up-after",
            "30",
        ],
        "one\ntwo\nthree\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // After its third message the example stops by itself.
    let (status, printed) = server.join().unwrap();
    assert!(status.success(), "{printed}");
    for (seq, word) in ["one", "two", "three"].iter().enumerate() {
        assert!(printed.contains(&format!(" {seq}: {word}")), "{printed}");
    }
}
