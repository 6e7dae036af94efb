//! A secchan session as a byte stream, in one process: a server and a device on loopback speak
//! a line protocol through `tokio_util::codec::Framed`, as they would over TLS.
//!
//! ```text
//! cargo run --example stream
//! ```
//! The server answers each line in capitals; the device sends three, prints the answers,
//! closes, and both ends see the authenticated close.

use futures_util::{SinkExt, StreamExt};
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::random::OsRandom;
use secchan::handshake::device::DeviceConfig;
use secchan::handshake::server::ServerConfig;
use secchan::handshake::AllowAnyDevice;
use secchan::transport::tcp::{connect, Listener};
use secchan::transport::Timeouts;
use secchan::trust::Pinned;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Framed, LinesCodec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keys in memory for the example; a real server loads its key file.
    let server_key = Arc::new(IdentityKey::generate(&mut OsRandom)?);
    let pin = Pinned(server_key.public().fingerprint());
    let config = ServerConfig::new(server_key, Arc::new(AllowAnyDevice));
    let listener = Listener::bind("127.0.0.1:0", Arc::new(config), Timeouts::default()).await?;
    let addr = listener.local_addr()?;

    let server = tokio::spawn(async move {
        let (conn, _peer) = listener.accept().await?.handshake().await?;
        let mut lines = Framed::new(conn, LinesCodec::new());
        while let Some(line) = lines.next().await {
            lines.send(line?.to_uppercase()).await?;
        }
        // The device's close was read and answered: everything it sent arrived.
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });

    let conn = connect(addr, &DeviceConfig::default(), &pin, Timeouts::default()).await?;
    println!(
        "session: {} + {}",
        conn.session().suite().name,
        conn.session().aead()
    );
    let mut lines = Framed::new(conn, LinesCodec::new());
    for reading in ["temperature 21.5", "humidity 40", "pressure 1013"] {
        lines.send(reading).await?;
        println!("server: {}", lines.next().await.ok_or("server left")??);
    }
    let mut conn = lines.into_inner();
    AsyncWriteExt::shutdown(&mut conn).await?;
    // Reading on to the end of the stream waits for the server's close.
    tokio::io::copy(&mut conn, &mut tokio::io::sink()).await?;
    server.await?.map_err(|e| e.to_string())?;
    println!("closed cleanly");
    Ok(())
}
