//! A TCP proxy a test can cut (a network partition between one client and a server) or slow
//! down (a server one network latency away).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Forwards 127.0.0.1:`port` to a server port until cut: [`TcpProxy::set_cut`]`(true)` drops
/// every open connection and refuses new ones, `false` lets them through again. Runs on the
/// test's Tokio runtime.
#[derive(Debug)]
pub struct TcpProxy {
    pub port: u16,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
}

impl TcpProxy {
    /// Listens on a free port and forwards to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> TcpProxy {
        Self::start_with_latency(target, Duration::ZERO).await
    }

    /// Like [`TcpProxy::start`], and every byte the client sends reaches the server
    /// `latency` after the proxy read it (replies are not held): a request-reply exchange
    /// takes at least `latency`, however many requests travel together. Bytes read at once
    /// are held together and in order, so a pipeline of requests sent in one go costs one
    /// `latency`, and requests each waiting for the previous reply cost one each.
    pub async fn start_with_latency(target: u16, latency: Duration) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        let cut = Arc::new(tokio::sync::watch::Sender::new(false));
        let watch = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue; // dropped: refused while cut
                }
                let mut cut = watch.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    if latency.is_zero() {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.wait_for(|c| *c) => {}
                        }
                    } else {
                        tokio::select! {
                            _ = delayed(inbound, outbound, latency) => {}
                            _ = cut.wait_for(|c| *c) => {}
                        }
                    }
                });
            }
        });
        TcpProxy { port, cut }
    }

    /// Cuts (`true`) or restores (`false`) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Copies both ways until either side closes, holding what `client` sends for `latency`.
async fn delayed(client: TcpStream, server: TcpStream, latency: Duration) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    // Each read is stamped when it arrived and written once its time has come: chunks
    // travel concurrently, as on a real link, rather than each waiting out the one before.
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    let read_requests = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = client_rx.read(&mut buf).await {
            if n == 0
                || held_tx
                    .send((tokio::time::Instant::now() + latency, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let write_requests = async move {
        while let Some((due, bytes)) = held_rx.recv().await {
            tokio::time::sleep_until(due).await;
            if server_tx.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = server_tx.shutdown().await;
    };
    let replies = async move {
        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
    };
    tokio::join!(read_requests, write_requests, replies);
}
