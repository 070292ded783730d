//! Cross-replica notices: what one hub replica changed, told to every replica (itself included) through PostgreSQL's
//! LISTEN/NOTIFY on one channel, so each can drop what it cached and push notices to the devices connected to it.
//!
//! A notice is sent in the transaction that made the change where there is one (a device's record: NOTIFY is
//! delivered at commit, never for a rolled-back write), else right after it ([`PgStore::notify`]). Notices are
//! hints, never the state: a receiver reads the store again. One listening connection per store, made again after it
//! is lost; since notices sent meanwhile are gone, the listeners then get [`Notice::Resync`] (treat everything as
//! changed), as does a receiver that fell too far behind.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{PgError, PgStore, query, target};
use crate::store::changes::ChangeLog;

/// The channel every replica listens on.
pub const CHANNEL: &str = "outpost_notices";

/// Notices a receiver may fall behind by before it gets [`Notice::Resync`] instead.
const BACKLOG: usize = 1024;

/// How long the listener waits before connecting again after its connection was lost or refused.
const RECONNECT_WAIT: Duration = Duration::from_secs(1);

/// What changed on some replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A device's record was written (its key, hex): site, assignment version, report…
    Device(String),
    /// A device was enrolled, approved or revoked (its key, hex): whom the hub serves changed.
    DeviceStatus(String),
    /// The director's revocation list now has this version (packages revoked): devices are to be told at once.
    Revocations(u64),
    /// Something served to devices may have changed (a release, an alias, a package, TUF metadata, an admin command
    /// ran): read it again.
    Changed,
    /// Notices may have been missed (the listening connection was lost, or this receiver fell behind): anything may
    /// have changed. Never sent; made by the receiving side.
    Resync,
}

impl Notice {
    /// The notice as a NOTIFY payload.
    pub fn payload(&self) -> String {
        match self {
            Notice::Device(key) => format!("device {key}"),
            Notice::DeviceStatus(key) => format!("device-status {key}"),
            Notice::Revocations(version) => format!("revocations {version}"),
            Notice::Changed => "changed".into(),
            Notice::Resync => "resync".into(),
        }
    }

    /// The notice a payload holds; anything this build does not know (a newer replica's notice) is
    /// [`Notice::Changed`], which makes the receiver read everything again.
    pub fn parse(payload: &str) -> Notice {
        match payload.split_once(' ') {
            Some(("device", key)) => Notice::Device(key.to_owned()),
            Some(("device-status", key)) => Notice::DeviceStatus(key.to_owned()),
            Some(("revocations", v)) => v.parse().map_or(Notice::Changed, Notice::Revocations),
            _ if payload == "resync" => Notice::Resync,
            _ => Notice::Changed,
        }
    }
}

/// The notices every replica sends, as this store receives them (see [`PgStore::listen`]).
#[derive(Debug)]
pub struct Notices(broadcast::Receiver<Notice>);

impl Notices {
    /// The next notice; [`Notice::Resync`] when some were missed. `None` once the store is closed.
    pub async fn next(&mut self) -> Option<Notice> {
        match self.0.recv().await {
            Ok(notice) => Some(notice),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Notice::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// `SELECT pg_notify(…)` of `notice`, in `c`'s transaction if it is one.
pub(crate) async fn send(c: &impl tokio_postgres::GenericClient, notice: &Notice) -> Result<(), PgError> {
    c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &notice.payload()]).await.map_err(query("sending a notice"))?;
    Ok(())
}

impl PgStore {
    /// Tells every replica (this one included) about `notice`, outside any transaction.
    pub fn notify(&self, notice: &Notice) -> Result<(), PgError> {
        let notice = notice.clone();
        let pool = self.pool.clone();
        self.worker.run("sending a notice", async move { send(&*pool.get().await?, &notice).await })
    }

    /// The notices of every replica from now on. The first call starts this store's listening connection and
    /// returns once it listens (a notice sent after that is received); the store's device change log then also
    /// records the devices other replicas write.
    pub fn listen(&self) -> Result<Notices, PgError> {
        if let Some(sender) = self.notices.get() {
            return Ok(Notices(sender.subscribe()));
        }
        let (sender, receiver) = broadcast::channel(BACKLOG);
        let (config, changes, tx) = (self.pool.config.clone(), self.device_changes.clone(), sender.clone());
        self.worker.run("listening for notices", async move {
            let connection = listening(&config, &tx, &changes).await?;
            tokio::spawn(async move {
                let _ = connection.await;
                loop {
                    tokio::time::sleep(RECONNECT_WAIT).await;
                    match listening(&config, &tx, &changes).await {
                        Ok(connection) => {
                            let _ = tx.send(Notice::Resync);
                            let _ = connection.await;
                        }
                        Err(e) => tracing::warn!(error = %e, "notices: listening again"),
                    }
                }
            });
            Ok::<_, PgError>(())
        })?;
        if self.notices.set(sender.clone()).is_err() {
            // Another caller started a listener meanwhile: use it (this one ends with its connection's task).
            return Ok(Notices(self.notices.get().map_or(receiver, |s| s.subscribe())));
        }
        Ok(Notices(receiver))
    }
}

/// Connects, listens on [`CHANNEL`], and returns the task that forwards its notices to `tx` (and devices' keys to
/// the change log) until the connection ends.
async fn listening(
    config: &tokio_postgres::Config,
    tx: &broadcast::Sender<Notice>,
    changes: &Arc<ChangeLog>,
) -> Result<tokio::task::JoinHandle<()>, PgError> {
    let (client, mut connection) =
        config.connect(NoTls).await.map_err(|source| PgError::Connect { target: target(config), source })?;
    let (tx, changes) = (tx.clone(), changes.clone());
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let notice = Notice::parse(n.payload());
                    if let Notice::Device(key) | Notice::DeviceStatus(key) = &notice {
                        changes.record(key);
                    }
                    let _ = tx.send(notice);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "notices: the listening connection failed");
                    break;
                }
                None => break,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(query("listening for notices"))?;
    // The session lasts as long as its client: kept by the task that ends with the connection.
    let keeper = tokio::spawn(async move {
        let _ = driver.await;
        drop(client);
    });
    Ok(keeper)
}
