//! Shared fixtures for the loopback integration tests.
#![allow(dead_code)]

use secchan::crypto::aead::AeadId;
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::Suite;
use secchan::handshake::device::DeviceConfig;
use secchan::handshake::server::{PeerDevice, ServerConfig};
use secchan::handshake::{AuthorizedDevices, Mode};
use secchan::transport::tcp::{Connection, Listener};
use secchan::transport::{Timeouts, TransportError};
use secchan::trust::Pinned;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub fn server_key() -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed(&[0x51; 32]))
}

pub fn device_key() -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed(&[0xd1; 32]))
}

pub fn short_timeouts() -> Timeouts {
    Timeouts {
        handshake: Duration::from_millis(500),
        idle: Duration::from_secs(5),
    }
}

pub fn server_config(mode: Mode) -> ServerConfig {
    let mut devices = AuthorizedDevices::new();
    devices.insert(device_key().public().fingerprint(), "sensor-1".into());
    let mut cfg = ServerConfig::new(server_key(), Arc::new(devices));
    cfg.mode = mode;
    cfg
}

pub fn device_config(suite: &'static Suite, aead: AeadId) -> DeviceConfig {
    DeviceConfig::default()
        .with_suite(suite)
        .with_aeads(vec![aead])
        .with_identity(device_key())
}

/// What a server-side session produced: its messages, then how it ended.
#[derive(Debug)]
pub struct ServerOutcome {
    pub peer: Option<PeerDevice>,
    pub messages: Vec<Vec<u8>>,
    pub end: Result<(), TransportError>,
}

/// Runs a server that echoes every message with "echo: " and reports each session's outcome.
pub async fn start_server(config: ServerConfig) -> (SocketAddr, mpsc::Receiver<ServerOutcome>) {
    let listener = Listener::bind("127.0.0.1:0", Arc::new(config), short_timeouts())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(incoming) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let outcome = match incoming.handshake().await {
                    Err(e) => ServerOutcome {
                        peer: None,
                        messages: vec![],
                        end: Err(e),
                    },
                    Ok((conn, peer)) => serve(conn, peer).await,
                };
                let _ = tx.send(outcome).await;
            });
        }
    });
    (addr, rx)
}

async fn serve(mut conn: Connection, peer: PeerDevice) -> ServerOutcome {
    let mut messages = Vec::new();
    let end = loop {
        match conn.recv().await {
            Ok(Some(m)) => {
                let mut reply = b"echo: ".to_vec();
                reply.extend_from_slice(&m);
                messages.push(m.to_vec());
                if let Err(e) = conn.send(&reply).await {
                    break Err(e);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if end.is_err() {
        conn.linger().await;
    }
    ServerOutcome {
        peer: Some(peer),
        messages,
        end,
    }
}

/// Writes one length-prefixed frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    w.write_all(&u16::try_from(body.len()).unwrap().to_be_bytes())
        .await?;
    w.write_all(body).await
}

/// Reads one length-prefixed frame, or `None` at end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// Connects a hybrid AES-256-GCM device with the test identity, pinning the test server.
pub async fn connect_hybrid(addr: SocketAddr) -> Result<Connection, TransportError> {
    secchan::transport::tcp::connect(
        addr,
        &device_config(&secchan::crypto::kem::X25519_MLKEM768, AeadId::Aes256Gcm),
        &Pinned(server_key().public().fingerprint()),
        short_timeouts(),
    )
    .await
}

/// A man in the middle: forwards frames between a device and `upstream`, passing each through
/// `tamper(direction, index, frame) -> frames to forward` (direction true = device to server).
/// The end of one direction is passed on as a half close, as TCP does.
pub async fn start_mitm<F>(upstream: SocketAddr, tamper: F) -> SocketAddr
where
    F: Fn(bool, usize, Vec<u8>) -> Vec<Vec<u8>> + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tamper = Arc::new(tamper);
    tokio::spawn(async move {
        let Ok((device, _)) = listener.accept().await else {
            return;
        };
        let server = TcpStream::connect(upstream).await.unwrap();
        let (mut dr, mut dw) = device.into_split();
        let (mut sr, mut sw) = server.into_split();
        let t1 = tamper.clone();
        let up = tokio::spawn(async move {
            let mut i = 0;
            while let Some(f) = read_frame(&mut dr).await {
                for out in t1(true, i, f) {
                    if write_frame(&mut sw, &out).await.is_err() {
                        return;
                    }
                }
                i += 1;
            }
            let _ = sw.shutdown().await;
        });
        let mut i = 0;
        'down: while let Some(f) = read_frame(&mut sr).await {
            for out in tamper(false, i, f) {
                if write_frame(&mut dw, &out).await.is_err() {
                    break 'down;
                }
            }
            i += 1;
        }
        let _ = dw.shutdown().await;
        let _ = up.await;
    });
    addr
}
