//! A TCP proxy a test can cut: a network partition between one client and a server.

use std::sync::Arc;

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
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|c| *c) => {}
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
