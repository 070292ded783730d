//! A UDP relay standing for the network between a site node (or the whole fleet) and the hub: it forwards
//! datagrams both ways and counts their bytes, and a partition makes it drop every one until healed.
//!
//! One upstream socket per client address, so the hub sees one peer per client as it would through a router.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::UdpSocket;

/// Largest datagram relayed (QUIC never sends more than its MTU).
const MAX_DATAGRAM: usize = 65_535;

/// The relay: where clients send, and the switch that cuts the link.
#[derive(Debug, Clone)]
pub struct Relay {
    /// The address clients use instead of the upstream's.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// UDP payload bytes relayed towards the upstream and back.
    bytes: Arc<[AtomicU64; 2]>,
}

impl Relay {
    /// Binds on `bind` and relays to `upstream` until the runtime ends.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub async fn start(bind: SocketAddr, upstream: SocketAddr) -> std::io::Result<Relay> {
        let socket = Arc::new(UdpSocket::bind(bind).await?);
        let bytes = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let relay = Relay { addr: socket.local_addr()?, cut: Arc::new(AtomicBool::new(false)), bytes };
        tokio::spawn(forward(socket, upstream, relay.cut.clone(), relay.bytes.clone()));
        Ok(relay)
    }

    /// Drops every datagram from now on (`true`), or relays again (`false`).
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// UDP payload bytes relayed so far: (towards the upstream, back from it).
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes[0].load(Ordering::Relaxed), self.bytes[1].load(Ordering::Relaxed))
    }
}

async fn forward(socket: Arc<UdpSocket>, upstream: SocketAddr, cut: Arc<AtomicBool>, bytes: Arc<[AtomicU64; 2]>) {
    let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        if cut.load(Ordering::Relaxed) {
            continue;
        }
        let up = match peers.get(&from) {
            Some(up) => up.clone(),
            None => {
                let local: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
                let Ok(up) = UdpSocket::bind(local).await else { continue };
                if up.connect(upstream).await.is_err() {
                    continue;
                }
                let up = Arc::new(up);
                peers.insert(from, up.clone());
                tokio::spawn(back(up.clone(), socket.clone(), from, cut.clone(), bytes.clone()));
                up
            }
        };
        if up.send(&buf[..n]).await.is_ok() {
            bytes[0].fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Upstream to client, for one client.
async fn back(
    up: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    cut: Arc<AtomicBool>,
    bytes: Arc<[AtomicU64; 2]>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while let Ok(n) = up.recv(&mut buf).await {
        if !cut.load(Ordering::Relaxed) && socket.send_to(&buf[..n], client).await.is_ok() {
            bytes[1].fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}
