//! The raw TCP baseline of the cookie's cost (`secchan bench --raw-responder`, started by
//! `secchan bench --attack`): a server that does, per connection, the I/O a cookie answer
//! does (accept, read one length-prefixed frame, write 20 bytes, close) and nothing else, on
//! a runtime like `secchan server`'s. What a cookie costs beyond it is secchan's own.

use crate::bench::BenchError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves on 127.0.0.1 until a line arrives on stdin: prints `addr=ADDR` first and the
/// connections answered last. Blocking; call from the process's main thread.
pub fn serve() -> Result<u64, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let answered = Arc::new(AtomicU64::new(0));
    let counted = answered.clone();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("addr={}", listener.local_addr()?);
        let stop = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)
        });
        // The accept loop on a worker thread, as `secchan server` runs its own.
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let answered = answered.clone();
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let mut reply = [0u8; 20];
                    reply[1] = 18;
                    if s.write_all(&reply).await.is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        let _ = stop.await;
        accepting.abort();
        Ok::<_, BenchError>(())
    })?;
    Ok(counted.load(Ordering::Relaxed))
}
