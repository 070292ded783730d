//! Hub replicas on one PostgreSQL database (a real server the test support starts): the leader lease held by one
//! replica at a time and passed on when its holder dies, notices raised on one replica reaching the others, and two
//! `outpost-hub serve` processes sharing a fleet (a staged release completed across a kill -9 of the leader).

// Deadlines for a real database server and real processes: wall time, not an injected clock.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_hub::replicas::{self, Leadership, NoticeHandler};
use outpost_hub::storage::DeviceStore;
use outpost_hub::store::changes::Since;
use outpost_hub::store::postgres::lease::LEASE_CLASS;
use outpost_hub::store::postgres::{self, LeaseName, Notice, PgLimits, PgStore};
use outpost_shared::clock::ManualClock;

const START: u64 = 1_795_881_600;
/// How long a lease or a notice may take to move between replicas before a test gives up.
const BOUND: Duration = Duration::from_secs(10);

/// A migrated database and a store on it for each of `n` replicas.
fn replicas(n: usize) -> (String, Vec<PgStore>) {
    let (db, url) = support::postgres::database();
    postgres::migrate(&url, &PgLimits::default()).unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let stores = (0..n).map(|_| PgStore::open(&url, clock.clone(), &PgLimits::default()).unwrap()).collect();
    (db, stores)
}

/// The backend process id holding the leader lease on database `db`, if any (advisory locks are per database;
/// the other tests' databases have leases of their own).
fn lease_holder(db: &str) -> Option<i64> {
    let pid = support::postgres::cluster().sql(
        db,
        &format!(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = {LEASE_CLASS} \
             AND objid = {} AND objsubid = 2 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            LeaseName::Leader.key()
        ),
    );
    pid.trim().parse().ok()
}

/// Polls `f` until it holds, for at most [`BOUND`]; returns how long it took.
fn within_bound(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn two_contenders_for_the_lease_exactly_one_holds_it() {
    let (db, stores) = replicas(2);
    let (a, b) = (stores[0].lease(LeaseName::Leader), stores[1].lease(LeaseName::Leader));
    assert!(a.try_acquire().unwrap());
    assert!(!b.try_acquire().unwrap(), "a second replica must not take a held lease");
    assert!(a.is_held() && !b.is_held());
    // Asking again changes nothing: the holder keeps it, the other is still refused.
    assert!(a.try_acquire().unwrap() && !b.try_acquire().unwrap());
    assert!(lease_holder(&db).is_some());
    // Released, it passes on.
    a.release();
    assert!(!a.is_held());
    within_bound("the released lease taken by the other replica", || b.try_acquire().unwrap());
    assert!(!a.try_acquire().unwrap());
}

#[test]
fn lease_of_a_terminated_backend_passes_to_the_other_replica_and_the_holder_knows_it_lost_it() {
    let (db, stores) = replicas(2);
    let (a, b) = (stores[0].lease(LeaseName::Leader), stores[1].lease(LeaseName::Leader));
    assert!(a.try_acquire().unwrap());
    let pid = lease_holder(&db).expect("the holder's backend");
    support::postgres::cluster().sql(&db, &format!("SELECT pg_terminate_backend({pid})"));
    within_bound("the other replica taking the lease", || b.try_acquire().unwrap());
    assert!(!a.is_held(), "a replica whose session was terminated must not believe it still leads");
    assert!(!a.try_acquire().unwrap(), "nor take it back while the other holds it");
    assert_ne!(lease_holder(&db), Some(pid));
}

#[test]
fn lease_of_a_replica_process_killed_passes_to_another() {
    let (db, stores) = replicas(1);
    let cluster = support::postgres::cluster();
    // Another replica's process: a psql session holding the lease, idle (as a replica's lease session is) until
    // it is killed.
    let mut holder = Command::new(psql())
        .arg("-h")
        .arg(&cluster.dir)
        .args(["-p", "5432", "-U", support::postgres::SUPERUSER, "-d", &db, "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = holder.stdin.take().unwrap();
    writeln!(input, "SELECT pg_advisory_lock({LEASE_CLASS}, {});", LeaseName::Leader.key()).unwrap();
    input.flush().unwrap();
    within_bound("the other process taking the lease", || lease_holder(&db).is_some());
    let lease = stores[0].lease(LeaseName::Leader);
    assert!(!lease.try_acquire().unwrap(), "held by the other process");
    holder.kill().unwrap(); // SIGKILL: no chance to release anything
    holder.wait().unwrap();
    drop(input); // only now: closing it earlier would let psql end its session cleanly
    let took = within_bound("taking the lease of the killed process", || lease.try_acquire().unwrap());
    assert!(lease.is_held());
    assert!(took < BOUND);
}

/// psql, from the binaries the test cluster runs on.
fn psql() -> std::path::PathBuf {
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin/psql"))))
        .filter(|(_, p)| p.exists())
        .collect();
    versions.sort();
    std::env::var_os("OUTPOST_PG_BIN")
        .map(|d| std::path::PathBuf::from(d).join("psql"))
        .unwrap_or_else(|| versions.pop().expect("psql").1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_lease_makes_exactly_one_replica_lead_and_the_other_take_over_when_it_goes() {
    let (db, stores) = replicas(2);
    let stores: Vec<Arc<PgStore>> = stores.into_iter().map(Arc::new).collect();
    let leads: Vec<Leadership> = (0..2).map(|_| Leadership::contending()).collect();
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            let lease = Arc::new(stores[i].lease(LeaseName::Leader));
            tokio::spawn(replicas::keep_lease(lease, leads[i].clone(), Duration::from_millis(100)))
        })
        .collect();
    let start = Instant::now();
    while leads.iter().filter(|l| l.leads()).count() != 1 {
        assert!(start.elapsed() < BOUND, "nobody leads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // For a while, still exactly one.
    for _ in 0..10 {
        assert_eq!(leads.iter().filter(|l| l.leads()).count(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The leader's session killed: it stops leading unless it takes the lease again itself with a new session
    // (both contend; whoever asks first gets it) — never two leaders, and the lease is held again.
    let pid = lease_holder(&db).unwrap();
    support::postgres::cluster().sql(&db, &format!("SELECT pg_terminate_backend({pid})"));
    let start = Instant::now();
    while lease_holder(&db).is_none_or(|p| p == pid) || leads.iter().filter(|l| l.leads()).count() != 1 {
        assert!(start.elapsed() < BOUND, "nobody holds the lease again after its session was killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The leader goes (its task and lease dropped, as when its process ends): the other takes over.
    let leader = leads.iter().position(Leadership::leads).unwrap();
    let mut tasks = tasks;
    tasks.remove(leader).abort();
    let start = Instant::now();
    while !leads[1 - leader].leads() {
        assert!(start.elapsed() < BOUND, "the other replica did not take over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.abort();
    }
}

fn key(n: u8) -> String {
    hex::encode([n; 32])
}

#[test]
fn device_revoked_on_one_replica_is_a_notice_and_a_change_on_the_other() {
    let (_, stores) = replicas(2);
    let (a, b) = (&stores[0], &stores[1]);
    let seq = b.device_change_head();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut notices = b.listen().unwrap();
    a.device_approve(&key(1), "stable").unwrap();
    a.device_reported(&key(1), &report()).unwrap();
    a.device_revoke(&key(1)).unwrap();
    let got: Vec<Notice> = rt.block_on(async {
        let mut got = vec![];
        while got.len() < 3 {
            let n = tokio::time::timeout(BOUND, notices.next()).await.expect("a notice in time").unwrap();
            got.push(n);
        }
        got
    });
    assert_eq!(
        got,
        vec![Notice::DeviceStatus(key(1)), Notice::Device(key(1)), Notice::DeviceStatus(key(1))],
        "approve and revoke move the status, a report does not"
    );
    match b.devices_changed_since(seq) {
        Since::Keys { keys, .. } => assert_eq!(keys.into_iter().collect::<Vec<_>>(), vec![key(1)]),
        other => panic!("the other replica's change log: {other:?}"),
    }
}

fn report() -> outpost_shared::update::StateReport {
    outpost_shared::update::StateReport {
        active: None,
        last_good: None,
        rolled_back: Vec::new(),
        phase: "idle".into(),
        message: String::new(),
        refusals: Vec::new(),
        policy: None,
        site: None,
        shadow: None,
    }
}

#[test]
fn notice_sent_outside_a_transaction_reaches_every_replica_once() {
    let (_, stores) = replicas(3);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut listening: Vec<_> = stores.iter().map(|s| s.listen().unwrap()).collect();
    stores[0].notify(&Notice::Revocations(7)).unwrap();
    stores[2].notify(&Notice::Changed).unwrap();
    for n in &mut listening {
        let got = rt.block_on(async {
            let first = tokio::time::timeout(BOUND, n.next()).await.unwrap().unwrap();
            let second = tokio::time::timeout(BOUND, n.next()).await.unwrap().unwrap();
            let more = tokio::time::timeout(Duration::from_millis(200), n.next()).await;
            assert!(more.is_err(), "one notice each: {more:?}");
            vec![first, second]
        });
        assert_eq!(got, vec![Notice::Revocations(7), Notice::Changed]);
    }
}

#[test]
fn a_device_write_rolled_back_sends_no_notice() {
    let (_, stores) = replicas(2);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut notices = stores[1].listen().unwrap();
    // An unknown device: the edit fails inside its transaction.
    assert!(stores[0].device_revoke(&key(9)).is_err());
    stores[0].notify(&Notice::Changed).unwrap();
    let first = rt.block_on(async { tokio::time::timeout(BOUND, notices.next()).await.unwrap().unwrap() });
    assert_eq!(first, Notice::Changed, "the failed write's notice must not be delivered");
}

#[test]
fn notices_listener_that_lost_its_connection_listens_again_and_says_resync() {
    let (db, stores) = replicas(2);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut notices = stores[1].listen().unwrap();
    let cluster = support::postgres::cluster();
    cluster.sql(
        &db,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' \
             AND query LIKE 'LISTEN%'"
        ),
    );
    let got = rt.block_on(async { tokio::time::timeout(BOUND, notices.next()).await.unwrap().unwrap() });
    assert_eq!(got, Notice::Resync);
    stores[0].notify(&Notice::Revocations(3)).unwrap();
    let got = rt.block_on(async { tokio::time::timeout(BOUND, notices.next()).await.unwrap().unwrap() });
    assert_eq!(got, Notice::Revocations(3));
}

/// A replica's notice machinery, recording what it does.
#[derive(Default)]
struct Recorder {
    revocations: AtomicU64,
    forgot: Mutex<Vec<Notice>>,
    pushed: Mutex<Vec<u64>>,
}

impl NoticeHandler for Recorder {
    fn forget(&self, notice: &Notice) {
        self.forgot.lock().unwrap().push(notice.clone());
    }
    fn revocations(&self) -> Option<u64> {
        Some(self.revocations.load(Ordering::SeqCst))
    }
    fn push(&self, version: u64) {
        self.pushed.lock().unwrap().push(version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_revoked_on_replica_a_is_pushed_at_once_by_replica_b() {
    let (_, stores) = replicas(2);
    let b = Arc::new(Recorder::default());
    let notices = stores[1].listen().unwrap();
    // A period far longer than the test: only the notice can make B push in time.
    let follow = tokio::spawn(replicas::follow_notices(notices, Duration::from_secs(3600), b.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await; // B has read the list's version once (0)
    let start = Instant::now();
    let a = &stores[0];
    tokio::task::block_in_place(|| a.notify(&Notice::Revocations(1)).unwrap());
    while b.pushed.lock().unwrap().is_empty() {
        assert!(start.elapsed() < BOUND, "replica B never pushed the notice");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*b.pushed.lock().unwrap(), vec![1]);
    // A device revoked on A makes B forget its cached view of that device; no push (the list did not move).
    tokio::task::block_in_place(|| a.device_approve(&key(2), "stable").unwrap());
    let start = Instant::now();
    while !b.forgot.lock().unwrap().contains(&Notice::DeviceStatus(key(2))) {
        assert!(start.elapsed() < BOUND, "replica B never heard of the device");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same version again, or an older one, is not pushed twice.
    tokio::task::block_in_place(|| a.notify(&Notice::Revocations(1)).unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*b.pushed.lock().unwrap(), vec![1]);
    follow.abort();
}

/// Two `outpost-hub serve` processes on one database and one shared directory, each with a data directory of its
/// own, set up from replica A's CLI before they start.
struct TwoReplicas {
    hubs: [support::TestHub; 2],
    shared: tempfile::TempDir,
}

impl TwoReplicas {
    fn new() -> TwoReplicas {
        let (_, url) = support::postgres::database();
        postgres::migrate(&url, &PgLimits::default()).unwrap();
        let shared = tempfile::tempdir().unwrap();
        let hubs = [support::TestHub::new(), support::TestHub::new()];
        for hub in &hubs {
            let config = hub.dir().join("hub.toml");
            let text = std::fs::read_to_string(&config).unwrap();
            let text = text
                .replace("# postgres = \"\"", &format!("postgres = \"{url}\""))
                .replace("# shared_dir = \"\"", &format!("shared_dir = \"{}\"", shared.path().display()))
                // Devices are served unattested here: what is under test is the replicas, not the gate.
                .replace("required = true", "required = false");
            std::fs::write(&config, text).unwrap();
        }
        let a = &hubs[0];
        let offline = a.tmp.path().join("offline");
        a.ok(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
        let (model, manifest) =
            a.write_affine(&outpost_shared::testkit::AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
        a.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
        assert!(shared.path().join("repository/metadata/1.root.json").exists(), "TUF lives in the shared directory");
        TwoReplicas { hubs, shared }
    }

    /// Starts replica `i`; returns it and the address and key it serves on.
    fn serve(&self, i: usize) -> (support::ServeProcess, std::net::SocketAddr, outpost_attestation::PublicKey) {
        let serve = support::ServeProcess::start(&self.hubs[i], &["--log-format", "json"]);
        let line = serve.until("`serving on`", BOUND * 3, |l| json(l)["addr"].is_string());
        let addr = json(&line)["addr"].as_str().unwrap().parse().unwrap();
        let key = json(&line)["hub_key"].as_str().unwrap().parse().unwrap();
        (serve, addr, key)
    }
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or(serde_json::Value::Null)
}

fn says(line: &str, text: &str) -> bool {
    json(line)["message"].as_str().is_some_and(|m| m.contains(text))
}

#[test]
fn two_serving_replicas_one_leads_and_when_it_is_killed_the_other_takes_over() {
    let r = TwoReplicas::new();
    let (mut a, _, _) = r.serve(0);
    a.until("replica A leading", BOUND, |l| says(l, "holds the leader lease"));
    let (b, _, _) = r.serve(1);
    // B contends every lease period and must not lead while A lives.
    let waited = std::time::Duration::from_secs(5);
    let start = Instant::now();
    while start.elapsed() < waited {
        if let Ok(line) = b.lines_within(Duration::from_millis(200)) {
            assert!(!says(&line, "holds the leader lease"), "two leaders: {line}");
        }
    }
    a.child.kill().unwrap(); // SIGKILL: nothing released on purpose
    a.child.wait().unwrap();
    b.until("replica B taking over", BOUND, |l| says(l, "holds the leader lease"));
}

#[test]
fn package_revoked_through_replica_a_is_pushed_to_a_device_connected_to_replica_b() {
    let r = TwoReplicas::new();
    let device = outpost_attestation::identity::Identity::from_seed([7; 32]);
    r.hubs[0].ok(&["device", "approve", &device.public_key().to_hex(), "--channel", "stable"]);
    let (_a, _, a_key) = r.serve(0);
    let (_b, addr, hub_key) = r.serve(1);
    assert_eq!(a_key, hub_key, "the replicas present one identity, from the shared directory");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = outpost_net::client::ClientConfig::new(addr, hub_key);
    let client = runtime.block_on(outpost_net::client::HubClient::connect(&device, &config)).unwrap();
    let _ = runtime.block_on(client.assignment()); // connected and admitted
    let mut notices = client.notices();
    std::thread::sleep(Duration::from_millis(500)); // B has read the list's version once
    // Through replica A's admin socket (A is serving): B learns of it from A's notice.
    r.hubs[0].ok(&["release", "revoke", "affine@1.0.0", "--reason", "field regression"]);
    runtime
        .block_on(async { tokio::time::timeout(BOUND, notices.changed()).await })
        .expect("replica B pushes the notice to its device")
        .unwrap();
    assert_eq!(*notices.borrow(), 1, "revocation list v1");
}

#[test]
fn package_added_through_one_replica_is_published_and_revoked_through_the_other() {
    let r = TwoReplicas::new();
    let key = r.hubs[0].tmp.path().join("offline/targets-1.key");
    let b = &r.hubs[1];
    b.ok(&["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", key.to_str().unwrap()]);
    let repo = outpost_hub::tuf::TufRepo::new(r.shared.path(), Default::default());
    let published = outpost_hub::director::Director::new(&repo).published().unwrap();
    assert!(
        published.iter().any(|p| p.channels.contains(&"stable".to_owned())),
        "published into the shared repository: {published:?}"
    );
    b.ok(&["release", "revoke", "affine@1.0.0", "--reason", "field regression"]);
}

/// The assignment version a bundle's assignment carries.
fn assignment_version(bundle: &[u8]) -> u64 {
    let bundle: outpost_shared::director::Bundle = outpost_shared::canonical::from_slice(bundle).unwrap();
    let envelope: outpost_shared::director::Envelope =
        outpost_shared::canonical::from_slice(&bundle.assignment).unwrap();
    let assignment: outpost_shared::director::Assignment =
        outpost_shared::canonical::from_slice(&envelope.body).unwrap();
    assignment.version
}

#[test]
fn a_device_moving_between_replicas_never_sees_its_assignment_version_go_back() {
    let r = TwoReplicas::new();
    let key = r.hubs[0].tmp.path().join("offline/targets-1.key");
    r.hubs[0].ok(&["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", key.to_str().unwrap()]);
    let device = outpost_attestation::identity::Identity::from_seed([8; 32]);
    r.hubs[1].ok(&["device", "approve", &device.public_key().to_hex(), "--channel", "stable"]);
    let (_a, a_addr, hub_key) = r.serve(0);
    let (_b, b_addr, _) = r.serve(1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut seen = Vec::new();
    // A, B, A, B, A: each replica caches what it signed, and must not serve it once the other signed a newer one.
    for addr in [a_addr, b_addr, a_addr, b_addr, a_addr] {
        let config = outpost_net::client::ClientConfig::new(addr, hub_key);
        let bundle = runtime.block_on(async {
            let client = outpost_net::client::HubClient::connect(&device, &config).await.unwrap();
            client.assignment().await.unwrap().expect("an assignment from each replica")
        });
        seen.push(assignment_version(&bundle));
    }
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "versions as the device saw them: {seen:?}");
}

/// A two-stage plan (half the channel, then everyone) that moves on as soon as one device installed.
const QUICK_PLAN: &str = r#"
name = "quick"
recovered_percent = 95

[[stage]]
name = "half"
cohort_percent = 50
min_devices = 1
soak_secs = 1
success_percent = 90
error_percent = 50

[[stage]]
name = "all"
cohort_percent = 100
min_devices = 1
soak_secs = 1
success_percent = 90
error_percent = 50
"#;

/// The state word `release list` prints for release `id`.
fn release_state(hub: &support::TestHub, id: &str) -> String {
    let list = hub.ok(&["release", "list"]);
    list.lines().find(|l| l.starts_with(id)).map(str::to_owned).unwrap_or_default()
}

#[test]
fn lease_holder_killed_mid_rollout_the_other_replica_completes_it_and_no_assignment_version_goes_back() {
    let r = TwoReplicas::new();
    let (a_hub, b_hub) = (&r.hubs[0], &r.hubs[1]);
    let key = a_hub.tmp.path().join("offline/targets-1.key");
    let (model, manifest) =
        a_hub.write_affine(&outpost_shared::testkit::AffineManifest::new("affine", "1.1.0", 3.0, 1.0));
    a_hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    for p in ["affine@1.0.0", "affine@1.1.0"] {
        a_hub.ok(&["release", "publish", p, "--channel", "stable", "--key", key.to_str().unwrap()]);
    }
    let devices: Vec<_> = (20..24).map(|n| outpost_attestation::identity::Identity::from_seed([n; 32])).collect();
    for d in &devices {
        a_hub.ok(&["device", "approve", &d.public_key().to_hex(), "--channel", "stable"]);
    }
    let (mut a, a_addr, hub_key) = r.serve(0);
    a.until("replica A leading", BOUND, |l| says(l, "holds the leader lease"));
    let (b, b_addr, _) = r.serve(1);
    let plan = a_hub.tmp.path().join("quick.toml");
    std::fs::write(&plan, QUICK_PLAN).unwrap();
    let id = a_hub.ok(&["release", "start", "affine@1.1.0", "--plan", plan.to_str().unwrap(), "--channel", "stable"]);
    let id = id.trim().to_owned();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Per device, each assignment seen: its version and what it assigned.
    let mut versions: Vec<Vec<(u64, outpost_shared::Digest)>> = vec![Vec::new(); devices.len()];
    let mut a_alive = true;
    let start = Instant::now();
    loop {
        for (i, d) in devices.iter().enumerate() {
            // Spread over both replicas while both live; everyone on B once A is gone.
            let addr = if a_alive && i % 2 == 0 { a_addr } else { b_addr };
            let config = outpost_net::client::ClientConfig::new(addr, hub_key);
            let bundle = runtime.block_on(async {
                let client = outpost_net::client::HubClient::connect(d, &config).await.unwrap();
                let bundle = client.assignment().await.unwrap().expect("an assignment");
                let version = assignment_version(&bundle);
                let target = assigned_target(&bundle);
                let report = outpost_shared::update::StateReport {
                    active: Some(target),
                    last_good: Some(target),
                    rolled_back: Vec::new(),
                    phase: "idle".into(),
                    message: String::new(),
                    refusals: Vec::new(),
                    policy: None,
                    site: None,
                    shadow: None,
                };
                client.report(&outpost_shared::canonical::to_vec(&report).unwrap()).await.unwrap();
                (version, target)
            });
            versions[i].push(bundle);
        }
        let state = release_state(if a_alive { a_hub } else { b_hub }, &id);
        if a_alive && state.contains("running stage 2") {
            // Mid-rollout: the leader dies without releasing anything.
            a.child.kill().unwrap();
            a.child.wait().unwrap();
            a_alive = false;
            b.until("replica B taking over", BOUND, |l| says(l, "holds the leader lease"));
        }
        if state.contains("completed") {
            assert!(!a_alive, "the rollout completed before the leader was killed mid-way: {state}");
            break;
        }
        assert!(start.elapsed() < BOUND * 6, "the rollout did not complete: {state}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // A version never goes back; the same version again is the same assignment served again (from a cache).
    for (i, seen) in versions.iter().enumerate() {
        assert!(
            seen.windows(2).all(|w| w[1].0 > w[0].0 || w[1] == w[0]),
            "device {i}'s assignments went back: {seen:?}"
        );
    }
    // Everyone ends on the release's package, and some device got it only in the second stage (after the kill).
    let last = versions[0].last().unwrap().1;
    assert!(versions.iter().all(|seen| seen.last().unwrap().1 == last), "{versions:?}");
    assert!(versions.iter().any(|seen| seen[0].1 != last), "the second stage moved nobody: {versions:?}");
    // No report lost or counted twice across the kill: every device installed, once.
    let state = release_state(b_hub, &id);
    let installed: Vec<&str> = state.split_whitespace().rev().take(3).collect();
    assert_eq!(installed, ["0", "0", &devices.len().to_string()], "INSTALLED ERRORS REJECTED: {state}");
    // And the audit log both replicas appended to is one unbroken chain.
    b_hub.ok(&["audit", "verify"]);
}

/// The package an assignment names first.
fn assigned_target(bundle: &[u8]) -> outpost_shared::Digest {
    let bundle: outpost_shared::director::Bundle = outpost_shared::canonical::from_slice(bundle).unwrap();
    let envelope: outpost_shared::director::Envelope =
        outpost_shared::canonical::from_slice(&bundle.assignment).unwrap();
    let assignment: outpost_shared::director::Assignment =
        outpost_shared::canonical::from_slice(&envelope.body).unwrap();
    assignment.targets[0].sha256
}

/// A device's view of a replica's TUF repository: metadata fetched over QUIC, as the agent fetches it.
struct QuicMirror(outpost_net::client::HubClient);

impl sigstore_tuf::Repository for QuicMirror {
    fn fetch_metadata<'a>(&'a self, name: &'a str, max_length: u64) -> sigstore_tuf::transport::FetchFuture<'a> {
        Box::pin(async move {
            self.0.metadata(name, max_length).await.map_err(|e| sigstore_tuf::Error::transport(e.to_string()))
        })
    }
    fn fetch_target<'a>(&'a self, _: &'a str, _: u64) -> sigstore_tuf::transport::FetchFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}

/// The shared directory's metadata as it is on disk this instant: what any replica serves next.
struct DiskMirror(std::path::PathBuf);

impl sigstore_tuf::Repository for DiskMirror {
    fn fetch_metadata<'a>(&'a self, name: &'a str, _: u64) -> sigstore_tuf::transport::FetchFuture<'a> {
        let bytes = std::fs::read(self.0.join(name)).ok();
        Box::pin(async move { Ok(bytes) })
    }
    fn fetch_target<'a>(&'a self, _: &'a str, _: u64) -> sigstore_tuf::transport::FetchFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}

fn tuf_now() -> jiff::Timestamp {
    use outpost_shared::clock::Clock;
    jiff::Timestamp::from_second(outpost_hub::clock::SystemClock.wall() as i64).unwrap()
}

/// A TUF client trusting root v1 refreshes from `mirror` (every role verified, pins and hashes checked); returns
/// whether `target` is listed.
async fn refresh_whole<R: sigstore_tuf::Repository + 'static>(
    mirror: R,
    root: &[u8],
    target: Option<&str>,
) -> Result<bool, sigstore_tuf::Error> {
    let mut u = sigstore_tuf::Updater::new(mirror, root)?;
    let now = tuf_now();
    u.refresh(now).await?;
    match target {
        Some(t) => Ok(u.get_target_info(t, now).await?.is_some()),
        None => Ok(true),
    }
}

/// Every file under `dir`, recursively (the repository's metadata, targets and temporary files).
fn files_under(dir: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p)
            } else {
                out.insert(p);
            }
        }
    }
    out
}

/// When to kill the publishing replica: once `n` new files have appeared in the shared repository (the target's
/// link, a role file, the snapshot, the timestamp's temporary file…), or a fixed time after the command started.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    NewFiles(usize),
    After(Duration),
}

#[test]
fn publisher_killed_mid_publish_leaves_no_half_published_metadata_served() {
    let points = [
        KillPoint::NewFiles(1),
        KillPoint::NewFiles(2),
        KillPoint::NewFiles(3),
        KillPoint::NewFiles(4),
        KillPoint::After(Duration::ZERO),
        KillPoint::After(Duration::from_millis(40)),
    ];
    let r = TwoReplicas::new();
    let (a_hub, b_hub) = (&r.hubs[0], &r.hubs[1]);
    let key = a_hub.tmp.path().join("offline/targets-1.key");
    let versions: Vec<String> = (0..points.len()).map(|i| format!("1.{}.0", i + 1)).collect();
    for v in &versions {
        let (model, manifest) =
            a_hub.write_affine(&outpost_shared::testkit::AffineManifest::new("affine", v, 3.0, i_bias(v)));
        a_hub.ok(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    }
    let device = outpost_attestation::identity::Identity::from_seed([31; 32]);
    a_hub.ok(&["device", "approve", &device.public_key().to_hex(), "--channel", "stable"]);
    let repository = r.shared.path().join("repository");
    let metadata = repository.join("metadata");
    let root = std::fs::read(metadata.join("1.root.json")).unwrap();

    let (mut a, _, hub_key) = r.serve(0);
    a.until("replica A leading", BOUND, |l| says(l, "holds the leader lease"));
    let (_b, b_addr, _) = r.serve(1);

    // A device on replica B refreshes TUF without pause for the whole test, and the shared directory is verified
    // as it is on disk between refreshes: every view must be a whole repository.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, root, metadata) = (stop.clone(), root.clone(), metadata.clone());
        std::thread::spawn(move || -> Result<u64, String> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let config = outpost_net::client::ClientConfig::new(b_addr, hub_key);
            let device = outpost_attestation::identity::Identity::from_seed([31; 32]);
            let mut views = 0;
            while !stop.load(Ordering::SeqCst) {
                rt.block_on(async {
                    let client = outpost_net::client::HubClient::connect(&device, &config)
                        .await
                        .map_err(|e| format!("connecting to replica B: {e}"))?;
                    refresh_whole(QuicMirror(client), &root, None)
                        .await
                        .map_err(|e| format!("replica B served metadata that does not verify: {e}"))?;
                    refresh_whole(DiskMirror(metadata.clone()), &root, None)
                        .await
                        .map_err(|e| format!("the shared directory does not verify: {e}"))
                })?;
                views += 2;
            }
            Ok(views)
        })
    };

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut mid_way = Vec::new();
    for (point, version) in points.iter().zip(&versions) {
        let package = format!("affine@{version}");
        let before = files_under(&repository);
        let start = Instant::now();
        let mut publish = Command::new(env!("CARGO_BIN_EXE_outpost-hub"))
            .arg("--data-dir")
            .arg(a_hub.dir())
            .args(["release", "publish", &package, "--channel", "stable", "--key", key.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        loop {
            let due = match *point {
                KillPoint::NewFiles(n) => files_under(&repository).difference(&before).count() >= n,
                KillPoint::After(d) => start.elapsed() >= d,
            };
            if due || publish.try_wait().unwrap().is_some() || start.elapsed() > BOUND {
                break;
            }
        }
        a.child.kill().unwrap(); // SIGKILL, wherever the publish is
        a.child.wait().unwrap();
        let finished = publish.try_wait().unwrap().is_some_and(|s| s.success());
        let _ = publish.wait();
        let target = format!("packages/low/affine-{version}.opkg");
        let listed = runtime.block_on(refresh_whole(DiskMirror(metadata.clone()), &root, Some(&target)));
        let listed = listed.unwrap_or_else(|e| panic!("after a kill at {point:?}, the repository: {e}"));
        if !finished && !listed {
            mid_way.push(*point);
        }
        // Completed through the other replica (B serves; the command goes to it).
        b_hub.ok(&["release", "publish", &package, "--channel", "stable", "--key", key.to_str().unwrap()]);
        let config = outpost_net::client::ClientConfig::new(b_addr, hub_key);
        let listed = runtime.block_on(async {
            let client = outpost_net::client::HubClient::connect(&device, &config).await.unwrap();
            refresh_whole(QuicMirror(client), &root, Some(&target)).await
        });
        assert!(listed.unwrap(), "{package} published through replica B after A was killed at {point:?}");
        // A back, for the next round (B holds the lease now or soon; A contends again).
        let (next, _, _) = r.serve(0);
        a = next;
    }
    stop.store(true, Ordering::SeqCst);
    let views = watcher.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert!(views > 0);
    eprintln!("kills that interrupted a publish: {mid_way:?}; views verified: {views}");
}

/// A distinct bias per version, so each package is a different model.
fn i_bias(version: &str) -> f32 {
    version.split('.').nth(1).and_then(|m| m.parse::<f32>().ok()).unwrap_or(0.0)
}

#[test]
fn capability_added_through_one_replica_is_enforced_on_a_package_added_through_the_other() {
    let r = TwoReplicas::new();
    let (a_hub, b_hub) = (&r.hubs[0], &r.hubs[1]);
    // Registered through A, in the database: eight wide, where the affine packages are four.
    let wide = a_hub.write_capability("wide", &support::affine_capability(8, &support::ALL_OWNERS));
    a_hub.ok(&["capability", "add", wide.to_str().unwrap()]);
    let (model, manifest) =
        b_hub.write_affine(&outpost_shared::testkit::AffineManifest::new("affine", "1.1.0", 3.0, 1.0));
    let refused = b_hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert!(!refused.status.success(), "added through B outside the capability registered through A");
    assert!(
        support::stderr(&refused).contains("refused by capability `test.affine` (revision 1)"),
        "{}",
        support::stderr(&refused)
    );
    assert!(!b_hub.ok(&["package", "list"]).contains("1.1.0"), "nothing registered");
    // What a replica shows of a package judges it by the database's capability too.
    let shown = a_hub.ok(&["package", "show", "affine@1.0.0"]);
    assert!(!shown.contains("not registered"), "{shown}");
}
