//! The path to one hub replica in tests: a UDP relay on loopback in front of a served hub, counting the bytes the
//! hub sends through it; it ends, sockets closed, when killed or once a byte budget is spent (a replica's process
//! killed mid-download), so the agent sees what it would of a dead replica: silence, and a closed port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::UdpSocket;

/// A relay to one hub replica.
pub struct Relay {
    /// Where the agent connects.
    pub addr: SocketAddr,
    to_agent: Arc<AtomicU64>,
    /// The relay dies once `to_agent` passes this.
    budget: Arc<AtomicU64>,
    dead: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to the hub at `hub`.
    pub async fn start(hub: SocketAddr) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(hub).await.unwrap();
        let to_agent = Arc::new(AtomicU64::new(0));
        let dead = Arc::new(AtomicBool::new(false));
        let budget = Arc::new(AtomicU64::new(u64::MAX));
        let task = tokio::spawn(relay(front, back, to_agent.clone(), budget.clone(), dead.clone()));
        Relay { addr, to_agent, budget, dead, task }
    }

    /// The relay dies once it has passed `bytes` more from the hub.
    pub fn die_after(&self, bytes: u64) {
        self.budget.store(self.to_agent() + bytes, Ordering::SeqCst);
    }

    /// Bytes the hub sent the agent through this relay (the datagrams' payloads: QUIC packets).
    pub fn to_agent(&self) -> u64 {
        self.to_agent.load(Ordering::SeqCst)
    }

    /// Whether the relay died (its budget spent, or killed).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst) || self.task.is_finished()
    }

    /// Kills the relay at once: its sockets close, nothing more passes.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    front: UdpSocket,
    back: UdpSocket,
    to_agent: Arc<AtomicU64>,
    budget: Arc<AtomicU64>,
    dead: Arc<AtomicBool>,
) {
    let mut agent: Option<SocketAddr> = None;
    let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
    loop {
        tokio::select! {
            r = front.recv_from(&mut up) => {
                let Ok((n, from)) = r else { continue };
                agent = Some(from);
                let _ = back.send(&up[..n]).await;
            }
            r = back.recv(&mut down) => {
                let Ok(n) = r else { continue };
                if to_agent.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > budget.load(Ordering::SeqCst) {
                    // The replica dies here: this datagram and everything after it are lost.
                    dead.store(true, Ordering::SeqCst);
                    return;
                }
                if let Some(agent) = agent {
                    let _ = front.send_to(&down[..n], agent).await;
                }
            }
        }
    }
}

/// A UDP port on loopback where nothing listens: an address of a replica that is down.
pub fn dead_address() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}
