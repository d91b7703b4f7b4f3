//! A TCP forwarder between a store and etcd that a test can cut or silence,
//! to simulate network failures deterministically.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes.
    Forward,
    /// Close every connection, and close new ones at once.
    Refuse,
    /// Keep connections open but forward nothing (a host that drops packets).
    Blackhole,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, rx) = watch::channel(Mode::Forward);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, target, rx.clone()));
            }
        });
        Proxy { addr, mode }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn serve(mut conn: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let current = *mode.borrow_and_update();
    match current {
        Mode::Refuse => return,
        Mode::Blackhole => {
            // Hold the connection silently until the mode changes.
            let _ = mode.changed().await;
            return;
        }
        Mode::Forward => {}
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    let stopped = tokio::select! {
        _ = copy_bidirectional(&mut conn, &mut upstream) => return,
        m = mode.wait_for(|m| *m != Mode::Forward) => m.map(|m| *m),
    };
    if let Ok(Mode::Blackhole) = stopped {
        // Stop forwarding but keep both ends open.
        let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
    }
}
