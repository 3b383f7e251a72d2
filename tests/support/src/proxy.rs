//! A TCP proxy that a test can cut: put between a server and its database, it makes the
//! database "go down" for that server alone, without stopping the database that other tests
//! share. Cut: every open connection is closed and new ones are closed on accept, so the server
//! sees broken connections and refused handshakes, as when the database restarts. Restore:
//! connections go through again.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct TcpProxy {
    /// The local port to connect to instead of the target's.
    pub port: u16,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free local port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *cut_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                    // Dropping both ends closes them: the server sees its connection break.
                });
            }
        });
        TcpProxy { port, cut, task }
    }

    /// Closes every connection through the proxy and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    pub fn restore(&self) {
        let _ = self.cut.send(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
