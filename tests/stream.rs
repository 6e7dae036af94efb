//! The byte interface of a Connection (AsyncRead + AsyncWrite) over loopback: a line protocol
//! through tokio_util's Framed, owned halves in two tasks, the message API on the other end,
//! and a connection cut before the authenticated close reported as an error, not an end.

mod common;

use common::{connect_hybrid, server_config, short_timeouts};
use futures_util::{SinkExt, StreamExt};
use secchan::handshake::Mode;
use secchan::transport::tcp::{Connection, Listener};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Framed, LinesCodec};

/// A server whose sessions go to `serve`, one task each.
async fn server<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let config = Arc::new(server_config(Mode::Any));
    let listener = Listener::bind("127.0.0.1:0", config, short_timeouts())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok(incoming) = listener.accept().await {
            let serve = serve.clone();
            tokio::spawn(async move {
                if let Ok((conn, _)) = incoming.handshake().await {
                    serve(conn).await;
                }
            });
        }
    });
    addr
}

/// Answers each line with it in capitals, until the device's close.
async fn shout(conn: Connection) {
    let mut lines = Framed::new(conn, LinesCodec::new());
    while let Some(Ok(line)) = lines.next().await {
        if lines.send(line.to_uppercase()).await.is_err() {
            return;
        }
    }
    let _ = AsyncWriteExt::shutdown(&mut lines.into_inner()).await;
}

#[tokio::test]
async fn a_line_protocol_runs_through_framed_on_both_ends() {
    let addr = server(shout).await;
    let conn = connect_hybrid(addr).await.unwrap();
    let mut lines = Framed::new(conn, LinesCodec::new());
    for word in ["temperature 21.5", "humidity 40", "pressure 1013"] {
        lines.send(word).await.unwrap();
        assert_eq!(lines.next().await.unwrap().unwrap(), word.to_uppercase());
    }
    // The device's close, answered: the stream ends cleanly on both sides.
    let mut conn = lines.into_inner();
    AsyncWriteExt::shutdown(&mut conn).await.unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert!(conn.session().is_closed());
}

#[tokio::test]
async fn owned_halves_read_and_write_in_separate_tasks() {
    let addr = server(shout).await;
    let (mut read, mut write) = connect_hybrid(addr).await.unwrap().split();
    let n = 200;
    let writer = tokio::spawn(async move {
        for i in 0..n {
            write
                .write_all(format!("reading {i}\n").as_bytes())
                .await
                .unwrap();
        }
        write.shutdown().await.unwrap();
        write
    });
    let mut echoed = String::new();
    read.read_to_string(&mut echoed).await.unwrap();
    let expected: String = (0..n).map(|i| format!("READING {i}\n")).collect();
    assert_eq!(echoed, expected);
    let conn = read.unsplit(writer.await.unwrap());
    assert!(conn.session().is_closed());
}

#[tokio::test]
async fn bytes_written_arrive_as_messages_and_messages_read_as_bytes() {
    // The server uses the message API: each record it receives is one write of the device.
    let addr = server(|mut conn: Connection| async move {
        while let Ok(Some(message)) = conn.recv().await {
            let _ = conn.send(&[b"got ", &message[..]].concat()).await;
        }
    })
    .await;
    let mut conn = connect_hybrid(addr).await.unwrap();
    conn.write_all(b"abc").await.unwrap();
    conn.flush().await.unwrap();
    let mut reply = [0u8; 7];
    conn.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"got abc");
    // A write longer than a record's payload takes one record's worth.
    let big = vec![b'x'; secchan::record::MAX_PAYLOAD + 100];
    let taken = conn.write(&big).await.unwrap();
    assert_eq!(taken, secchan::record::MAX_PAYLOAD);
}

#[tokio::test]
async fn a_connection_cut_before_the_close_is_an_error_not_an_end() {
    // The server drops the TCP connection after one message, without a Close.
    let addr = server(|mut conn: Connection| async move {
        let _ = conn.recv().await;
        drop(conn);
    })
    .await;
    let mut conn = connect_hybrid(addr).await.unwrap();
    conn.write_all(b"hello").await.unwrap();
    conn.flush().await.unwrap();
    let mut rest = Vec::new();
    let err = conn.read_to_end(&mut rest).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
}
