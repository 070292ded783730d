//! End-to-end tests of the agent–hub QUIC service over real loopback QUIC: the hub's `serve` driver with an
//! in-memory backend, the agent's `HubClient`, and hand-built frames on raw streams for the refusal cases.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_agent::transport::{TargetRange, TransportError, TufRepository};
use outpost_attestation::identity::{Identity, PublicKey};
use outpost_net::client::{ClientConfig, ClientError, HubClient};
use outpost_net::server::{Backend, BackendError, ServeConfig, Server};
use outpost_shared::wire::{self, ErrorCode, FrameDecoder, Limits, Response, WireError, codes, frame_header, kinds};
use sigstore_tuf::Repository;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const HUB_SEED: [u8; 32] = [0x11; 32];
const DEVICE_SEED: [u8; 32] = [0x22; 32];
const STRANGER_SEED: [u8; 32] = [0x33; 32];
const TARGET_PATH: &str = "models/affine/1.0.0.opkg";
const TARGET_LEN: usize = 200_000;

/// Bytes of the test target: not periodic in 256, so a misplaced range shows.
fn target_bytes() -> Vec<u8> {
    (0..TARGET_LEN as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// The hub's stores, in memory; targets live in files in a temporary directory.
struct MemoryBackend {
    allowed: Mutex<HashSet<[u8; 32]>>,
    metadata: HashMap<String, Vec<u8>>,
    assignments: HashMap<[u8; 32], Vec<u8>>,
    targets: HashMap<String, (PathBuf, u64)>,
    reports: Mutex<Vec<([u8; 32], Vec<u8>)>>,
    _dir: tempfile::TempDir,
}

impl MemoryBackend {
    fn new() -> MemoryBackend {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("target.bin");
        std::fs::write(&file, target_bytes()).unwrap();
        let short = dir.path().join("short.bin");
        std::fs::write(&short, b"only ten b").unwrap();
        let device = Identity::from_seed(DEVICE_SEED).public_key().0;
        MemoryBackend {
            allowed: Mutex::new([device].into()),
            metadata: [
                ("timestamp.json".to_owned(), b"{\"signed\":{\"_type\":\"timestamp\"}}".to_vec()),
                ("1.root.json".to_owned(), vec![b'r'; 5000]),
            ]
            .into(),
            assignments: [(device, b"assignment for device".to_vec())].into(),
            targets: [
                (TARGET_PATH.to_owned(), (file, TARGET_LEN as u64)),
                // The backend claims more bytes than the file holds: the hub must not pretend otherwise.
                ("broken/short.bin".to_owned(), (short, 100)),
            ]
            .into(),
            reports: Mutex::new(Vec::new()),
            _dir: dir,
        }
    }
}

impl Backend for MemoryBackend {
    /// This suite is about the transport; attestation over it has its own suite (`tests/attestation.rs`).
    fn attestation_required(&self) -> bool {
        false
    }
    async fn device_allowed(self: Arc<Self>, key: [u8; 32]) -> bool {
        self.allowed.lock().unwrap().contains(&key)
    }
    async fn metadata(self: Arc<Self>, name: String) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.metadata.get(&name).cloned())
    }
    async fn assignment(self: Arc<Self>, device: [u8; 32]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.assignments.get(&device).cloned())
    }
    async fn target(self: Arc<Self>, path: String) -> Result<Option<(PathBuf, u64)>, BackendError> {
        Ok(self.targets.get(&path).cloned())
    }
    async fn report(self: Arc<Self>, device: [u8; 32], body: Vec<u8>) -> Result<(), BackendError> {
        if body == b"fail" {
            return Err("disk full".into());
        }
        self.reports.lock().unwrap().push((device, body));
        Ok(())
    }
}

/// A running hub on 127.0.0.1 with an ephemeral port.
struct TestHub {
    addr: SocketAddr,
    key: PublicKey,
    backend: Arc<MemoryBackend>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestHub {
    fn start(tweak: impl FnOnce(&mut ServeConfig)) -> TestHub {
        let identity = Identity::from_seed(HUB_SEED);
        let key = identity.public_key();
        let mut config = ServeConfig::new(identity);
        config.bind = "127.0.0.1:0".parse().unwrap();
        tweak(&mut config);
        let backend = Arc::new(MemoryBackend::new());
        let server = Server::bind(config, backend.clone()).unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestHub { addr, key, backend, stop: Some(stop), task: Some(task) }
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.addr, self.key);
        c.stall_timeout = Duration::from_secs(5);
        c
    }

    async fn client(&self) -> HubClient {
        HubClient::connect(&Identity::from_seed(DEVICE_SEED), &self.config()).await.unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(Duration::from_secs(10), self.task.take().unwrap()).await.expect("hub stops").unwrap();
    }
}

/// Sends `bytes` on a fresh stream (finishing it if `finish`), and reads the hub's one-frame answer.
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8], finish: bool) -> (Response, quinn::SendStream) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let answer = timeout(Duration::from_secs(5), recv.read_to_end(64 * 1024)).await.expect("hub answers").unwrap();
    let mut decoder = FrameDecoder::<Response>::new(Limits::default());
    assert_eq!(decoder.push(&answer).unwrap(), answer.len(), "exactly one frame, then the end of the stream");
    (decoder.pop().expect("a complete frame"), send)
}

fn error_code(response: &Response) -> ErrorCode {
    match response {
        Response::Error { code, .. } => *code,
        other => panic!("expected an error response, got {other:?}"),
    }
}

/// Waits for the hub to stop our send side, and returns its code.
async fn stop_code(send: &quinn::SendStream) -> u32 {
    let code = timeout(Duration::from_secs(5), send.stopped()).await.expect("hub stops the stream").unwrap();
    code.expect("stopped, not finished").into_inner() as u32
}

/// Proves the connection still serves ordinary requests.
async fn still_serves(client: &HubClient) {
    assert!(client.metadata("timestamp.json", 16_384).await.unwrap().is_some());
}

#[tokio::test]
async fn metadata_is_served_by_name_and_missing_is_not_found() {
    let hub = TestHub::start(|_| {});
    let client = hub.client().await;
    let ts = client.metadata("timestamp.json", 16_384).await.unwrap();
    assert_eq!(ts.as_deref(), Some(&hub.backend.metadata["timestamp.json"][..]));
    assert_eq!(client.metadata("1.root.json", 512_000).await.unwrap().unwrap().len(), 5000);
    assert_eq!(client.metadata("2.root.json", 512_000).await.unwrap(), None);
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn metadata_larger_than_asked_for_is_refused_by_the_hub() {
    let hub = TestHub::start(|_| {});
    let client = hub.client().await;
    let err = client.metadata("1.root.json", 4999).await.unwrap_err();
    assert!(matches!(err, ClientError::Hub { code: ErrorCode::TooLarge, .. }), "{err}");
    still_serves(&client).await;
}

#[tokio::test]
async fn assignment_is_the_connected_devices() {
    let hub = TestHub::start(|_| {});
    let client = hub.client().await;
    assert_eq!(client.assignment().await.unwrap().as_deref(), Some(&b"assignment for device"[..]));
}

#[tokio::test]
async fn report_is_stored_against_the_device_and_acknowledged() {
    let hub = TestHub::start(|_| {});
    let client = hub.client().await;
    client.report(b"installed affine 1.0.0").await.unwrap();
    let device = Identity::from_seed(DEVICE_SEED).public_key().0;
    assert_eq!(*hub.backend.reports.lock().unwrap(), vec![(device, b"installed affine 1.0.0".to_vec())]);
    // A backend failure is an internal error to the device, with no detail, and the hub carries on.
    let err = client.report(b"fail").await.unwrap_err();
    assert!(matches!(&err, ClientError::Hub { code: ErrorCode::Internal, message } if message == "internal error"));
    still_serves(&client).await;
}

#[tokio::test]
async fn target_download_resumes_from_an_offset() {
    let hub = TestHub::start(|_| {});
    let client = hub.client().await;
    let all = target_bytes();
    let total = TARGET_LEN as u64;

    // An interrupted download left the first 70 001 bytes on disk; resume fetches exactly the rest.
    let mut file = all[..70_001].to_vec();
    let range = client.download_target(TARGET_PATH, 70_001, total, &mut file).await.unwrap().unwrap();
    assert_eq!(range, TargetRange { total_len: total, offset: 70_001, len: total - 70_001 });
    assert!(file == all, "resumed download reassembles the target");

    // A bounded range in the middle.
    let mut middle = Vec::new();
    let range = client.download_range(TARGET_PATH, 1000, Some(5000), total, &mut middle).await.unwrap().unwrap();
    assert_eq!(range.len, 5000);
    assert!(middle == all[1000..6000]);

    // At the very end: an empty range; past it: a typed refusal.
    let mut empty = Vec::new();
    let range = client.download_target(TARGET_PATH, total, total, &mut empty).await.unwrap().unwrap();
    assert_eq!((range.len, empty.len()), (0, 0));
    let err = client.download_target(TARGET_PATH, total + 1, total, &mut Vec::new()).await.unwrap_err();
    assert!(matches!(err, ClientError::Hub { code: ErrorCode::RangeNotSatisfiable, .. }), "{err}");

    // Bounded by the length the caller trusts, before any body byte is taken.
    let mut none = Vec::new();
    let err = client.download_target(TARGET_PATH, 0, total - 1, &mut none).await.unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { total_len, .. } if total_len == total), "{err}");
    assert!(none.is_empty());

    assert_eq!(client.download_target("models/none.opkg", 0, total, &mut Vec::new()).await.unwrap(), None);
    still_serves(&client).await;
}

#[tokio::test]
async fn target_file_shorter_than_recorded_resets_the_stream_instead_of_lying() {
    let hub = TestHub::start(|_| {});
    let client = hub.client().await;
    let mut got = Vec::new();
    let err = client.download_target("broken/short.bin", 0, 100, &mut got).await.unwrap_err();
    // quinn's `ReadError` reaches us only as text (`ClientError::Stream`): match the reset and its code.
    let reset = format!("stream reset by peer: error {}", codes::STREAM_INTERNAL);
    assert!(matches!(&err, ClientError::Stream(m) if *m == reset), "{err:?}");
    assert!(got.len() <= 10, "no more than the file holds was passed on: {}", got.len());
    still_serves(&client).await;
}

#[tokio::test]
async fn unknown_device_is_refused() {
    let hub = TestHub::start(|_| {});
    let config = hub.config();
    let err = async {
        let client = HubClient::connect(&Identity::from_seed(STRANGER_SEED), &config).await?;
        client.metadata("timestamp.json", 16_384).await
    }
    .await
    .unwrap_err();
    assert_eq!(err.close_reason(), Some((codes::CLOSE_UNKNOWN_DEVICE, "unknown device".to_owned())), "{err}");
    // The enrolled device is unaffected.
    still_serves(&hub.client().await).await;
}

#[tokio::test]
async fn device_removed_from_the_allow_list_is_cut_off_while_connected() {
    let hub = TestHub::start(|c| c.recheck_interval = Duration::from_millis(200));
    let client = hub.client().await;
    still_serves(&client).await;
    hub.backend.allowed.lock().unwrap().clear();
    let closed = timeout(Duration::from_secs(3), client.connection().closed()).await.expect("hub cuts it off");
    let err = ClientError::Connection(closed);
    assert_eq!(err.close_reason(), Some((codes::CLOSE_UNKNOWN_DEVICE, "device no longer allowed".to_owned())));
    let after = client.metadata("timestamp.json", 16_384).await.unwrap_err();
    assert_eq!(after.close_reason(), err.close_reason(), "later requests fail with the same close: {after:?}");
}

#[tokio::test]
async fn wrong_hub_key_is_refused_by_client() {
    let hub = TestHub::start(|_| {});
    let mut config = hub.config();
    config.hub_key = Identity::from_seed(STRANGER_SEED).public_key();
    let err = HubClient::connect(&Identity::from_seed(DEVICE_SEED), &config).await.unwrap_err();
    let ClientError::Connection(quinn::ConnectionError::TransportError(e)) = &err else {
        panic!("expected a TLS failure during the handshake, got {err:?}");
    };
    assert!(e.to_string().contains("pinned key is"), "{e}");
    still_serves(&hub.client().await).await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused() {
    let hub = TestHub::start(|c| c.max_connections = 1);
    let first = hub.client().await;
    let second = async {
        let client = HubClient::connect(&Identity::from_seed(DEVICE_SEED), &hub.config()).await?;
        client.metadata("timestamp.json", 16_384).await
    }
    .await;
    assert!(
        matches!(&second, Err(ClientError::Connection(quinn::ConnectionError::ConnectionClosed(c)))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
        "{second:?}"
    );
    still_serves(&first).await;
}

/// Starts `n` handshakes with the hub from 127.0.0.2 that go silent: each client talks through a relay of its own
/// that passes its packets to the hub and, of the hub's, only a Retry (when `pass_retry`), so the handshake
/// either never gets past address validation or stalls right after it. Abort the tasks to end them.
async fn silent_handshakes(hub: &TestHub, n: usize, pass_retry: bool) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let relay = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let mut config = ClientConfig::new(relay.local_addr().unwrap(), hub.key);
        config.connect_timeout = Duration::from_secs(120);
        let hub_addr = hub.addr;
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            let mut client = None;
            while let Ok((len, from)) = relay.recv_from(&mut buf).await {
                if from != hub_addr {
                    client = Some(from);
                    let _ = relay.send_to(&buf[..len], hub_addr).await;
                } else if let Some(client) = client {
                    // A QUIC v1 Retry: long header, packet type 3.
                    let retry = buf[0] & 0x80 != 0 && (buf[0] >> 4) & 0x3 == 3;
                    if pass_retry && retry {
                        let _ = relay.send_to(&buf[..len], client).await;
                    }
                }
            }
        }));
        tasks.push(tokio::spawn(async move {
            let _ = HubClient::connect(&Identity::from_seed(STRANGER_SEED), &config).await;
        }));
    }
    // Let every first Initial (and its Retry round trip) reach the hub.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tasks
}

/// The device (from 127.0.0.1) still gets a connection, promptly, and is served on it.
async fn connects_and_is_served(hub: &TestHub) {
    let (identity, config) = (Identity::from_seed(DEVICE_SEED), hub.config());
    let client = timeout(Duration::from_secs(5), HubClient::connect(&identity, &config))
        .await
        .expect("the handshake finishes")
        .expect("a device still gets a connection");
    still_serves(&client).await;
}

#[tokio::test]
async fn silent_initial_packets_do_not_hold_connection_slots() {
    let hub = TestHub::start(|c| c.max_connections = 4);
    let attack = silent_handshakes(&hub, 8, false).await;
    connects_and_is_served(&hub).await;
    attack.iter().for_each(JoinHandle::abort);
}

#[tokio::test]
async fn stalled_handshakes_from_one_source_do_not_lock_out_others() {
    let hub = TestHub::start(|c| {
        c.max_connections = 4;
        c.max_handshakes = 4;
        c.max_handshakes_per_source = 2;
        c.handshake_timeout = Duration::from_secs(120);
    });
    // Past address validation, then silent: without a bound per source these would take every handshake slot
    // (and, counted as connections, every connection slot) for the handshake timeout.
    let attack = silent_handshakes(&hub, 8, true).await;
    connects_and_is_served(&hub).await;
    attack.iter().for_each(JoinHandle::abort);
}

#[tokio::test]
async fn truncated_frame_gets_typed_error_and_hub_keeps_serving() {
    let hub = TestHub::start(|_| {});
    let client = hub.client().await;
    let frame = wire::encode_frame(
        &wire::Request::GetMetadata { name: "timestamp.json".into(), max_len: 16_384 },
        &Limits::default(),
    )
    .unwrap();
    // Mid-header and mid-body, each followed by the end of the stream.
    for cut in [3, frame.len() - 4] {
        let (response, _) = raw_exchange(client.connection(), &frame[..cut], true).await;
        assert_eq!(error_code(&response), ErrorCode::Truncated, "{response:?}");
    }
    // A stream with nothing on it at all.
    let (response, _) = raw_exchange(client.connection(), &[], true).await;
    assert_eq!(error_code(&response), ErrorCode::Truncated);
    // Bytes after a complete request.
    let (response, _) = raw_exchange(client.connection(), &[&frame[..], &[0]].concat(), true).await;
    assert_eq!(error_code(&response), ErrorCode::TrailingBytes);
    still_serves(&client).await;
    still_serves(&hub.client().await).await;
}

#[tokio::test]
async fn oversized_frame_is_refused_before_buffering() {
    let hub = TestHub::start(|_| {});
    let client = hub.client().await;
    // Announce a 4 GiB report and send only the header: the refusal comes without a byte of the body.
    let (response, send) = raw_exchange(client.connection(), &frame_header(kinds::POST_REPORT, u32::MAX), false).await;
    let Response::Error { code, message } = &response else { panic!("{response:?}") };
    assert_eq!(*code, ErrorCode::Oversized);
    assert!(message.contains(&Limits::POST_REPORT.to_string()), "{message}");
    assert_eq!(stop_code(&send).await, codes::STREAM_PROTOCOL, "the request side is reset");
    // Just over the limit of a small type.
    let (response, _) =
        raw_exchange(client.connection(), &frame_header(kinds::GET_METADATA, Limits::GET_METADATA + 1), false).await;
    assert_eq!(error_code(&response), ErrorCode::Oversized);
    assert!(hub.backend.reports.lock().unwrap().is_empty());
    still_serves(&client).await;
}

#[tokio::test]
async fn unknown_message_type_gets_typed_error() {
    let hub = TestHub::start(|_| {});
    let client = hub.client().await;
    for kind in [0x00, 0x7f, kinds::METADATA] {
        let (response, send) =
            raw_exchange(client.connection(), &[&frame_header(kind, 1)[..], &[0xa0]].concat(), false).await;
        assert_eq!(error_code(&response), ErrorCode::UnknownType, "type {kind:#04x}");
        assert_eq!(stop_code(&send).await, codes::STREAM_PROTOCOL);
    }
    still_serves(&client).await;
}

#[tokio::test]
async fn wrong_cbor_type_gets_typed_error() {
    let hub = TestHub::start(|_| {});
    let client = hub.client().await;
    // A GetMetadata whose body is the text string "timestamp.json" instead of a map.
    let body = [&[0x6e][..], b"timestamp.json"].concat();
    let frame = [&frame_header(kinds::GET_METADATA, body.len() as u32)[..], &body].concat();
    let (response, _) = raw_exchange(client.connection(), &frame, true).await;
    assert_eq!(error_code(&response), ErrorCode::WrongCborType, "{response:?}");
    // A GetTarget whose offset is a text string.
    let body = [&[0xa2, 0x64][..], b"path", &[0x61, b'a', 0x66], b"offset", &[0x61, b'0']].concat();
    let frame = [&frame_header(kinds::GET_TARGET, body.len() as u32)[..], &body].concat();
    let (response, _) = raw_exchange(client.connection(), &frame, true).await;
    assert_eq!(error_code(&response), ErrorCode::WrongCborType, "{response:?}");
    // Not CBOR at all.
    let frame = [&frame_header(kinds::GET_ASSIGNMENT, 1)[..], &[0xff]].concat();
    let (response, _) = raw_exchange(client.connection(), &frame, true).await;
    assert_eq!(error_code(&response), ErrorCode::Malformed, "{response:?}");
    still_serves(&client).await;
}

#[tokio::test]
async fn stalled_peer_times_out() {
    let hub = TestHub::start(|c| c.stall_timeout = Duration::from_millis(300));
    let client = hub.client().await;
    let (mut send, mut recv) = client.connection().open_bi().await.unwrap();
    send.write_all(&frame_header(kinds::GET_METADATA, 40)[..3]).await.unwrap();
    let answer = timeout(Duration::from_secs(3), recv.read_to_end(1024)).await.expect("hub gives up").unwrap();
    let mut decoder = FrameDecoder::<Response>::new(Limits::default());
    decoder.push(&answer).unwrap();
    assert_eq!(error_code(&decoder.pop().unwrap()), ErrorCode::Timeout);
    assert_eq!(stop_code(&send).await, codes::STREAM_TIMEOUT);
    still_serves(&client).await;
}

#[tokio::test]
async fn per_connection_concurrency_is_bounded() {
    let hub = TestHub::start(|c| c.max_streams_per_connection = 2);
    let client = hub.client().await;
    let conn = client.connection();
    let frame = wire::encode_frame(&wire::Request::GetAssignment { device: None }, &Limits::default()).unwrap();
    // Two requests held open half-sent use up the connection's streams.
    let (mut send1, mut recv1) = conn.open_bi().await.unwrap();
    send1.write_all(&frame[..2]).await.unwrap();
    let (mut send2, _recv2) = conn.open_bi().await.unwrap();
    send2.write_all(&frame[..2]).await.unwrap();
    let mut third = Box::pin(conn.open_bi());
    assert!(timeout(Duration::from_millis(500), &mut third).await.is_err(), "a third stream must wait");
    // Completing the first request frees its stream; the third then opens and is served.
    send1.write_all(&frame[2..]).await.unwrap();
    send1.finish().unwrap();
    let answer = recv1.read_to_end(1024).await.unwrap();
    let mut decoder = FrameDecoder::<Response>::new(Limits::default());
    decoder.push(&answer).unwrap();
    assert!(matches!(decoder.pop(), Some(Response::Assignment { .. })));
    let (mut send3, mut recv3) = timeout(Duration::from_secs(5), third).await.expect("stream freed").unwrap();
    send3.write_all(&frame).await.unwrap();
    send3.finish().unwrap();
    let answer = recv3.read_to_end(1024).await.unwrap();
    let mut decoder = FrameDecoder::<Response>::new(Limits::default());
    decoder.push(&answer).unwrap();
    assert!(matches!(decoder.pop(), Some(Response::Assignment { .. })));
}

#[tokio::test]
async fn sigstore_repository_fetches_through_the_hub_and_not_found_is_none() {
    let hub = TestHub::start(|_| {});
    let client = hub.client().await;
    let repo = TufRepository::new(Arc::new(client));
    let ts = repo.fetch_metadata("timestamp.json", 16_384).await.unwrap();
    assert_eq!(ts.as_deref(), Some(&hub.backend.metadata["timestamp.json"][..]));
    assert!(repo.fetch_metadata("2.root.json", 512_000).await.unwrap().is_none());
    let target = repo.fetch_target(TARGET_PATH, TARGET_LEN as u64).await.unwrap().unwrap();
    assert!(target == target_bytes());
    assert!(repo.fetch_target("models/none.opkg", 1000).await.unwrap().is_none());
    // Over max_length is an error, not a truncated success: the client's own refusal (a target the hub declares
    // longer: the transport's bound) and the hub's (metadata longer than asked for: the client's error kept as
    // the transport error's source).
    let err = repo.fetch_target(TARGET_PATH, 1000).await.unwrap_err();
    let source = transport_source(&err);
    assert!(matches!(source, TransportError::TooLarge { path, max: 1000 } if path == TARGET_PATH), "{err:?}");
    let err = repo.fetch_metadata("1.root.json", 100).await.unwrap_err();
    let source = transport_source(&err).source_as::<ClientError>();
    assert!(matches!(source, Some(ClientError::Hub { code: ErrorCode::TooLarge, .. })), "{err:?}");
}

/// The transport error a `sigstore_tuf::Error::Transport` carries; panics on any other error.
fn transport_source(e: &sigstore_tuf::Error) -> &TransportError {
    match e {
        sigstore_tuf::Error::Transport { source: Some(source), .. } => {
            source.downcast_ref::<TransportError>().unwrap_or_else(|| panic!("not a transport error: {e:?}"))
        }
        other => panic!("expected a transport error with a source, got {other:?}"),
    }
}

/// The client's per-stream QUIC receive window (`agent/src/quic.rs`): the most a hub can push on one stream
/// beyond what the client has taken from it.
const CLIENT_STREAM_WINDOW: u64 = 16 * 1024 * 1024;

/// The most the client takes from quinn in one read (`agent/src/quic.rs`): its bound is checked per read.
const CLIENT_READ: u64 = 64 * 1024;

/// A hub holding the real hub's key that lies: every request gets `head`, then endless bytes nobody asked for.
/// It reports, per stream, how many bytes QUIC accepted from it (flow control admits only what the client's
/// window allows) once the client stops the stream.
struct LyingHub {
    config: ClientConfig,
    sent: tokio::sync::mpsc::UnboundedReceiver<u64>,
}

impl LyingHub {
    fn start(head: Vec<u8>) -> LyingHub {
        let identity = Identity::from_seed(HUB_SEED);
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(outpost_net::tls::server_config(&identity).unwrap())
                .unwrap();
        let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut config = ClientConfig::new(endpoint.local_addr().unwrap(), identity.public_key());
        config.stall_timeout = Duration::from_secs(5);
        let (tx, sent) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let Ok(conn) = incoming.await else { continue };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let _ = recv.read_to_end(64 * 1024).await;
                    let filler = [0x5a; 16 * 1024];
                    let mut total = 0u64;
                    if send.write_all(&head).await.is_ok() {
                        total += head.len() as u64;
                        while let Ok(n) = send.write(&filler).await {
                            total += n as u64;
                        }
                    }
                    let _ = tx.send(total);
                }
            }
        });
        LyingHub { config, sent }
    }

    async fn client(&self) -> HubClient {
        HubClient::connect(&Identity::from_seed(DEVICE_SEED), &self.config).await.unwrap()
    }

    /// What QUIC accepted from the liar on the stream the client gave up.
    async fn sent(&mut self) -> u64 {
        timeout(Duration::from_secs(10), self.sent.recv()).await.expect("the client stops the stream").unwrap()
    }
}

#[tokio::test]
async fn endless_target_body_is_cut_at_the_declared_length() {
    const DECLARED: u64 = 100_000;
    let header = Response::TargetHeader { total_len: DECLARED, offset: 0, len: DECLARED };
    let head = [wire::encode_frame(&header, &Limits::default()).unwrap(), vec![0xa5; DECLARED as usize]].concat();
    let mut hub = LyingHub::start(head);
    let client = hub.client().await;
    // A counting sink: everything the client passes on lands here.
    let mut sink = Vec::new();
    let err = client.download_target(TARGET_PATH, 0, DECLARED, &mut sink).await.unwrap_err();
    // The bound is checked per read: the read that crossed the declared length held at most one read of excess,
    // and none of that read reached the sink.
    assert!(
        matches!(err, ClientError::Wire(WireError::TrailingBytes { extra }) if extra as u64 <= CLIENT_READ),
        "{err:?}"
    );
    assert!(sink.len() as u64 <= DECLARED, "{} bytes passed on, {DECLARED} declared", sink.len());
    assert!(sink.iter().all(|&b| b == 0xa5), "only declared body bytes were passed on");
    // At the transport, QUIC flow control held the liar to what the client took plus one stream window.
    let sent = hub.sent().await;
    assert!(sent <= DECLARED + CLIENT_READ + CLIENT_STREAM_WINDOW + 64, "the liar got {sent} bytes accepted");
}

#[tokio::test]
async fn endless_metadata_is_refused_at_the_frame_header() {
    const ASKED: u64 = 16_384;
    // A metadata frame announcing a megabyte, then the megabyte and more.
    let mut hub = LyingHub::start(frame_header(kinds::METADATA, 1 << 20).to_vec());
    let client = hub.client().await;
    let err = client.metadata("timestamp.json", ASKED).await.unwrap_err();
    // Refused on the announced length, against the caller's bound plus CBOR framing: before the body is buffered.
    let limit = u32::try_from(ASKED + 32).unwrap();
    assert!(
        matches!(err, ClientError::Wire(WireError::Oversized { kind: kinds::METADATA, len, limit: l })
            if len == 1 << 20 && l == limit),
        "{err:?}"
    );
    let sent = hub.sent().await;
    assert!(sent <= CLIENT_READ + CLIENT_STREAM_WINDOW + 64, "the liar got {sent} bytes accepted");
}

#[tokio::test]
async fn metadata_one_byte_longer_than_asked_is_refused_by_the_client() {
    const ASKED: u64 = 16_384;
    let answer = Response::Metadata { bytes: vec![b'{'; ASKED as usize + 1] };
    let mut hub = LyingHub::start(wire::encode_frame(&answer, &Limits::default()).unwrap());
    let client = hub.client().await;
    let err = client.metadata("timestamp.json", ASKED).await.unwrap_err();
    let reason = format!("{} bytes of metadata, asked for at most {ASKED}", ASKED + 1);
    assert!(matches!(&err, ClientError::Wire(WireError::UnexpectedResponse { reason: r }) if *r == reason), "{err:?}");
    hub.sent().await;
}
