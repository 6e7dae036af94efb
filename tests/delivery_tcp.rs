//! The delivery promise over TCP, tested by killing, restarting and delaying the other side
//! (protocol.md §11, README "Delivery"): a device exits 0 only when every line was written,
//! a restarted server writes nothing twice, and a killed device loses nothing it read.

mod delivery_support;

use delivery_support::*;
use std::time::Duration;

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A device piping 150,000 lines to a server that gets SIGTERM while it is still writing
/// them. `drain` is the server's --drain-timeout; returns the device's log.
fn backlog_with_sigterm(name: &str, drain: &str) -> String {
    let dir = tempdir(name);
    let fp = keygen(&dir.join("server.key"));
    let state = dir.join("state");
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        "--drain-timeout",
        drain,
    ];
    let (mut first, addr) = server(&dir, "127.0.0.1:0", &args, 0);
    let sent = lines("backlog", 150_000);
    let mut dev = device(
        &dir,
        &addr,
        &fp,
        &["--give-up-after", "60"],
        input(&dir, "input", sent.iter().cloned()),
        0,
    );
    wait_for("the first lines", || written(&dir).len() >= 5_000);
    first.terminate();
    assert_eq!(first.wait(), Some(0), "the server drains and exits 0");
    // Either the drain took the whole backlog and the device is done, or the device waits for
    // a new session: it never exits 0 with a line missing.
    match dev.child.try_wait().unwrap().map(|s| s.code()) {
        Some(code) => assert_eq!(code, Some(0), "{}", dev.log()),
        None => {
            let (_second, _) = server(&dir, &addr, &args, 1);
            assert_eq!(dev.wait(), Some(0), "{}", dev.log());
        }
    }
    assert_exactly_once(&dir, &sent);
    dev.log()
}

#[test]
fn sigterm_during_a_backlog_drains_it() {
    // The default drain (10 s) is long enough for the rest of the backlog.
    let log = backlog_with_sigterm("delivery-drain", "10");
    assert!(!log.contains("server going away"), "{log}");
}

#[test]
fn sigterm_during_a_backlog_that_outlasts_the_drain_never_ends_in_a_false_success() {
    // No drain: the server closes with going_away at once, the device reconnects to the
    // restarted server and completes there.
    let log = backlog_with_sigterm("delivery-backlog", "0");
    assert!(log.contains("server going away"), "{log}");
}

#[test]
fn a_close_that_crosses_delayed_data_is_not_taken_for_delivery() {
    use std::io::Write;
    let dir = tempdir("delivery-crossing");
    let fp = keygen(&dir.join("server.key"));
    let (mut srv, addr) = server(&dir, "127.0.0.1:0", &["--drain-timeout", "1"], 0);
    // Everything the device sends reaches the server 3 s late.
    let proxy = delaying_proxy(addr.parse().unwrap(), Duration::from_secs(3));
    let mut dev = device(
        &dir,
        &proxy.to_string(),
        &fp,
        &["--give-up-after", "2"],
        std::process::Stdio::piped(),
        0,
    );
    wait_for("the session", || srv.log().contains("session established"));
    // The lines and the device's close are on their way when the server is told to stop.
    let sent = lines("crossing", 20);
    let mut stdin = dev.child.stdin.take().unwrap();
    stdin
        .write_all(format!("{}\n", sent.join("\n")).as_bytes())
        .unwrap();
    drop(stdin);
    srv.terminate();
    assert_eq!(srv.wait(), Some(0));
    let code = dev.wait();
    let got = written(&dir).len();
    assert!(
        got < sent.len(),
        "the lines were delayed past the drain: {got} written"
    );
    assert_ne!(
        code,
        Some(0),
        "exit 0 with {got} of 20 lines written: {}",
        dev.log()
    );
    assert_eq!(code, Some(5), "network gave up: {}", dev.log());
}

#[test]
fn ten_server_restarts_and_crashes_lose_nothing_and_repeat_nothing() {
    let dir = tempdir("delivery-restarts");
    let fp = keygen(&dir.join("server.key"));
    let state = dir.join("state");
    let state_arg = [
        "--state-dir",
        state.to_str().unwrap(),
        "--drain-timeout",
        "1",
    ];
    let (mut srv, addr) = server(&dir, "127.0.0.1:0", &state_arg, 0);
    let sent = lines("restart", 20_000);
    let mut dev = device(
        &dir,
        &addr,
        &fp,
        &["--give-up-after", "60", "--rate", "3000/s"],
        input(&dir, "input", sent.iter().cloned()),
        0,
    );
    for round in 1..=10 {
        let seen = written(&dir).len();
        wait_for("progress", || {
            written(&dir).len() > seen || dev.child.try_wait().unwrap().is_some()
        });
        // Every other restart is a crash (SIGKILL): the state directory and the output
        // file's checkpoint must carry exactly-once across it.
        if round % 2 == 0 {
            srv.crash();
        } else {
            srv.terminate();
            srv.wait();
        }
        srv = server(&dir, &addr, &state_arg, round).0;
    }
    assert_eq!(dev.wait(), Some(0), "{}", dev.log());
    let resumed = (0..=10)
        .map(|n| std::fs::read_to_string(dir.join(format!("server-{n}.log"))).unwrap_or_default())
        .filter(|log| log.contains("resumed=true"))
        .count();
    assert!(
        resumed > 0,
        "the device resumed with a ticket after some restart"
    );
    assert_exactly_once(&dir, &sent);
}

#[test]
fn a_device_killed_mid_stream_goes_on_from_its_spool() {
    let dir = tempdir("delivery-spool");
    let fp = keygen(&dir.join("server.key"));
    let (_srv, addr) = server(&dir, "127.0.0.1:0", &[], 0);
    let spool = dir.join("spool");
    let spool_arg = ["--spool", spool.to_str().unwrap()];
    let first = lines("first", 5_000);
    let mut dev = device(
        &dir,
        &addr,
        &fp,
        &[&spool_arg[..], &["--rate", "2000/s"]].concat(),
        input(&dir, "input-1", first.iter().cloned()),
        0,
    );
    wait_for("the first lines", || !written(&dir).is_empty());
    dev.crash();
    let second = lines("second", 100);
    let mut again = device(
        &dir,
        &addr,
        &fp,
        &spool_arg,
        input(&dir, "input-2", second.iter().cloned()),
        1,
    );
    assert_eq!(again.wait(), Some(0), "{}", again.log());
    let got = written(&dir);
    let stream = &got[0].0;
    assert!(
        got.iter().all(|(s, _, _)| s == stream),
        "one stream across both runs"
    );
    // Whatever the killed run read reached the server, in order, each line once, and the
    // second run went on with the next numbers.
    let seqs: Vec<u64> = got.iter().map(|(_, seq, _)| *seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seqs.len(), "a sequence number written twice");
    assert_eq!(sorted, (0..seqs.len() as u64).collect::<Vec<_>>(), "a gap");
    let read_first = got.len() - second.len();
    for (_, seq, data) in &got {
        let want = match *seq as usize {
            i if i < read_first => &first[i],
            i => &second[i - read_first],
        };
        assert_eq!(data, want, "message {seq}");
    }
}

#[test]
fn sigterm_to_a_device_delivers_what_it_read_then_exits_zero() {
    use std::io::Write;
    let dir = tempdir("delivery-device-term");
    let fp = keygen(&dir.join("server.key"));
    let (_srv, addr) = server(&dir, "127.0.0.1:0", &[], 0);
    let mut dev = device(&dir, &addr, &fp, &[], std::process::Stdio::piped(), 0);
    let mut stdin = dev.child.stdin.take().unwrap();
    let sent = lines("term", 100);
    stdin
        .write_all(format!("{}\n", sent.join("\n")).as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    wait_for("the lines", || written(&dir).len() == sent.len());
    // The input stays open: the signal, not its end, stops the device.
    dev.terminate();
    assert_eq!(dev.wait(), Some(0), "{}", dev.log());
    assert!(dev.log().contains("interrupted"), "{}", dev.log());
    assert_exactly_once(&dir, &sent);
    drop(stdin);
}

#[test]
fn sigterm_to_a_device_whose_server_acknowledges_nothing_exits_undelivered() {
    let dir = tempdir("delivery-device-undelivered");
    let fp = keygen(&dir.join("server.key"));
    // Something that accepts TCP connections and never answers: no session is ever had.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let spool = dir.join("spool");
    let mut dev = device(
        &dir,
        &addr,
        &fp,
        &[
            "--spool",
            spool.to_str().unwrap(),
            "--close-timeout",
            "1",
            "--handshake-timeout",
            "1",
        ],
        std::process::Stdio::piped(),
        0,
    );
    let mut stdin = dev.child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"kept\n").unwrap();
    wait_for("a connection attempt", || {
        dev.log().contains("reconnecting")
    });
    dev.terminate();
    assert_eq!(dev.wait(), Some(6), "undelivered: {}", dev.log());
    let last = dev.log().lines().last().unwrap_or_default().to_string();
    assert!(last.contains("1 messages unacknowledged"), "{last}");
    assert!(last.contains("--spool"), "{last}");
    drop(stdin);
    // The spool kept it for the next run.
    let (_srv, addr) = server(&dir, "127.0.0.1:0", &[], 0);
    let mut again = device(
        &dir,
        &addr,
        &fp,
        &["--spool", spool.to_str().unwrap()],
        std::process::Stdio::null(),
        1,
    );
    assert_eq!(again.wait(), Some(0), "{}", again.log());
    assert_exactly_once(&dir, &["kept".to_string()]);
}
