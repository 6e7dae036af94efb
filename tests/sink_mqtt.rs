//! `secchan server --sink mqtt://HOST:PORT/TOPIC`: what TCP devices send is republished to a
//! real Mosquitto, each message on its device's topic with QoS 1, acknowledged to the device
//! only once the broker has it; a broker that goes away mid-stream costs nothing; a broker
//! that refuses the sink's messages stops the server with one line.
#![cfg(feature = "mqtt")]

mod cli_support;
mod support;

use cli_support::{bin, keygen, run_device, tempdir, Logged};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use support::mosquitto::Mosquitto;
use tokio::sync::mpsc;

/// One message as a subscriber sees it.
#[derive(Debug)]
struct Received {
    topic: String,
    payload: String,
    properties: HashMap<String, String>,
}

/// A subscriber to `filter` with a session the broker keeps (it queues what arrives while the
/// subscriber or the broker is away); reconnects for as long as it lives.
async fn subscriber(m: &Mosquitto, filter: &str) -> mpsc::UnboundedReceiver<Received> {
    let mut o = MqttOptions::new("plant-subscriber", "127.0.0.1", m.port);
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(3600));
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed, mut confirmed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let properties = p
                        .properties
                        .map(|p| p.user_properties.into_iter().collect())
                        .unwrap_or_default();
                    let received = Received {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        properties,
                    };
                    if tx.send(received).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    confirmed.recv().await.unwrap();
    rx
}

/// The next `n` messages, each seq once (QoS 1 may repeat one).
async fn take(rx: &mut mpsc::UnboundedReceiver<Received>, n: usize) -> Vec<Received> {
    let mut got: Vec<Received> = Vec::new();
    while got.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the subscriber received too little")
            .unwrap();
        if !got
            .iter()
            .any(|g| g.properties["seq"] == r.properties["seq"])
        {
            got.push(r);
        }
    }
    got.sort_by_key(|r| r.properties["seq"].parse::<u64>().unwrap());
    got
}

/// `secchan server` republishing to `url`, for devices listed as `pump-7`.
fn start_server(dir: &Path, url: &str, extra: &[(&str, &str)]) -> (Logged, String, String) {
    let server_fp = keygen(&dir.join("server.key"));
    let device_fp = keygen(&dir.join("device.key"));
    std::fs::write(dir.join("devices.txt"), format!("{device_fp} pump-7\n")).unwrap();
    let mut c = bin();
    c.args(["server", "--listen", "127.0.0.1:0", "--key"])
        .arg(dir.join("server.key"))
        .arg("--authorized-devices")
        .arg(dir.join("devices.txt"))
        .args(["--sink", url])
        .envs(extra.iter().copied())
        .stdout(Stdio::null());
    let mut server = Logged::spawn(c, &dir.join("server.log"));
    let addr = server.listening();
    (server, addr, server_fp)
}

fn device_args<'a>(dir: &'a Path, addr: &'a str, fp: &'a str) -> Vec<String> {
    [
        "--connect",
        addr,
        "--server-key",
        fp,
        "--key",
        dir.join("device.key").to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_message_is_republished_on_its_devices_topic_with_its_stream_and_seq() {
    let dir = tempdir("sink-mqtt");
    let broker = Mosquitto::start();
    let mut rx = subscriber(&broker, "plant/+/telemetry").await;
    let url = format!(
        "mqtt://127.0.0.1:{}/plant/{{device}}/telemetry",
        broker.port
    );
    let (server, addr, fp) = start_server(&dir, &url, &[]);
    let args = device_args(&dir, &addr, &fp);
    let input: String = (0..20).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let out = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            run_device(
                &dir,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
                input,
            )
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = take(&mut rx, 20).await;
    for (n, r) in got.iter().enumerate() {
        assert_eq!(r.topic, "plant/pump-7/telemetry");
        assert_eq!(r.payload, format!("{{\"n\":{n}}}"));
        assert_eq!(r.properties["seq"], n.to_string());
        assert_eq!(r.properties["device"], "pump-7");
        assert!(r.properties["fingerprint"].starts_with("SHA256:"));
        assert_eq!(r.properties["stream"].len(), 16);
    }
    assert!(server.text().contains("MQTT republishing sink ready"));
}

/// Writes the lines N for N in `range`.
fn send(input: &mut impl Write, range: std::ops::Range<u32>) {
    for n in range {
        writeln!(input, "{n}").unwrap();
    }
    input.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_goes_away_mid_stream_costs_no_message() {
    let dir = tempdir("sink-mqtt-outage");
    let mut broker = Mosquitto::start_persistent();
    let mut rx = subscriber(&broker, "plant/#").await;
    let url = format!("mqtt://127.0.0.1:{}/plant/{{device}}", broker.port);
    let (server, addr, fp) = start_server(&dir, &url, &[]);
    let mut c = bin();
    c.current_dir(&dir)
        .arg("device")
        .args(device_args(&dir, &addr, &fp))
        .args(["--ack-timeout", "2", "--give-up-after", "120"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut device = Logged::spawn(c, &dir.join("device.log"));
    let mut input = device.child.stdin.take().unwrap();
    send(&mut input, 0..50);
    assert_eq!(take(&mut rx, 50).await.len(), 50);
    broker.stop();
    send(&mut input, 50..100);
    let mut server = server;
    server.wait_for("output unavailable", Duration::from_secs(30));
    broker.spawn();
    send(&mut input, 100..150);
    drop(input);
    let status = tokio::task::spawn_blocking(move || {
        let status = device.child.wait().unwrap();
        (status, device.text())
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "device: {}\nserver: {}",
        status.1,
        server.text()
    );
    // QoS 1 may bring a message of before the outage again: the ones after it are new.
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 100 {
        let r = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the subscriber received too little")
            .unwrap();
        let seq: u64 = r.properties["seq"].parse().unwrap();
        if seq >= 50 {
            seen.insert(seq, r.payload);
        }
    }
    let expected: std::collections::BTreeMap<u64, String> =
        (50..150).map(|n| (n, n.to_string())).collect();
    assert_eq!(seen, expected, "every message after the outage arrived");
    assert_eq!(
        server.count("output available again"),
        1,
        "{}",
        server.text()
    );
}

#[test]
fn a_broker_that_refuses_the_sinks_messages_stops_the_server_with_one_line() {
    let dir = tempdir("sink-mqtt-acl");
    let broker = Mosquitto::start_with_acl(
        &[("sink", "sink-password")],
        "user sink\ntopic write elsewhere/#\n",
    );
    let url = format!("mqtt://sink@127.0.0.1:{}/plant/{{device}}", broker.port);
    let (mut server, addr, fp) =
        start_server(&dir, &url, &[("SECCHAN_SINK_PASSWORD", "sink-password")]);
    let args = device_args(&dir, &addr, &fp);
    let mut c = bin();
    c.current_dir(&dir)
        .arg("device")
        .args(&args)
        .args(["--give-up-after", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut device = Logged::spawn(c, &dir.join("device.log"));
    writeln!(device.child.stdin.take().unwrap(), "refused").unwrap();
    let status = server.child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(7),
        "an output failure: {}",
        server.text()
    );
    let text = server.text();
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("secchan: "), "{text}");
    assert!(last.contains("the broker refused a message"), "{last}");
    assert!(
        !text.contains("sink-password"),
        "the password is never logged"
    );
    let _ = device.child.wait();
    assert!(
        !device.text().contains("every message delivered"),
        "nothing was acknowledged: {}",
        device.text()
    );
}
