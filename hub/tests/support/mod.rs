//! Test support for the hub: temporary hubs, generated packages on disk, and the real CLI binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use outpost_hub::Registry;
use outpost_shared::Digest;
use outpost_shared::clock::ManualClock;
use outpost_shared::testkit::{AffineManifest, affine_model};

pub mod console;
pub mod postgres;
pub mod webdriver;

#[path = "../../../fixtures/faultfs/mod.rs"]
pub mod faultfs;

/// A hub in a temporary directory, removed on drop.
pub struct TestHub {
    pub tmp: tempfile::TempDir,
}

impl TestHub {
    pub fn new() -> TestHub {
        let tmp = tempfile::tempdir().unwrap();
        Registry::init(&tmp.path().join("hub")).unwrap();
        TestHub { tmp }
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("hub")
    }

    pub fn open(&self) -> Registry {
        Registry::open(&self.dir(), Arc::new(ManualClock::new(1_795_881_600))).unwrap()
    }

    /// Writes a generated model and its manifest into the temp dir; returns (model, manifest) paths.
    pub fn write_affine(&self, m: &AffineManifest) -> (PathBuf, PathBuf) {
        self.write_files(&format!("{}-{}", m.name, m.version), &affine_model(m.scale, m.bias), &m.toml())
    }

    pub fn write_files(&self, stem: &str, model: &[u8], manifest: &str) -> (PathBuf, PathBuf) {
        let model_path = self.tmp.path().join(format!("{stem}.onnx"));
        let manifest_path = self.tmp.path().join(format!("{stem}.toml"));
        std::fs::write(&model_path, model).unwrap();
        std::fs::write(&manifest_path, manifest).unwrap();
        (model_path, manifest_path)
    }

    /// Runs the real `outpost-hub` binary against this hub.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs the real `outpost-hub` binary against this hub with a disk fault armed.
    pub fn cli_faulty(&self, fault: &faultfs::Fault, args: &[&str]) -> Output {
        fault.apply(&mut self.command(args)).output().unwrap()
    }

    /// Starts the real `outpost-hub` binary against this hub with a disk fault configured (armed or not); its
    /// stderr goes to `log`.
    pub fn spawn_faulty(&self, fault: &faultfs::Fault, args: &[&str], log: &Path) -> std::process::Child {
        let stderr = std::fs::File::create(log).unwrap();
        fault.apply(&mut self.command(args)).stdout(std::process::Stdio::null()).stderr(stderr).spawn().unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost-hub"));
        cmd.arg("--data-dir").arg(self.dir()).args(args);
        cmd
    }

    /// Every file under the blob store (excluding the temp area).
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.dir().join("blobs/sha256"), &mut out);
        out.sort();
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() { walk(&p, out) } else { out.push(p) }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Flips one byte of a (read-only) blob file in place.
pub fn flip_byte(path: &Path, at: usize) {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models").join(name)
}

/// Every owner role a capability names.
pub const ALL_OWNERS: [&str; 4] = ["model", "evaluation", "security", "production"];

/// A capability TOML for the testkit's affine packages (`test.affine`, `x[N, width]` → `y[N, width]`; the
/// packages have width 4) naming the owners in `owners`.
pub fn affine_capability(width: u64, owners: &[&str]) -> String {
    let owners: String = owners.iter().map(|r| format!("{r} = \"{r}-owner@example.invalid\"\n")).collect();
    format!(
        r#"name = "test.affine"
data_classification = "internal"
risk_tier = "low"

[[contract.inputs]]
name = "x"
dtype = "f32"
shape = ["N", {width}]

[[contract.outputs]]
name = "y"
dtype = "f32"
shape = ["N", {width}]

[baseline]
name = "analytic"

[budget]
p95_latency_ms = 5.0
cpu = "any"
threads = 1
peak_memory_bytes = 67108864
package_size_bytes = 1048576

[owners]
{owners}"#
    )
}

impl TestHub {
    /// Writes a capability TOML into the temp dir; returns its path.
    pub fn write_capability(&self, stem: &str, toml: &str) -> PathBuf {
        let path = self.tmp.path().join(format!("{stem}.capability.toml"));
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// Runs the CLI and insists it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
    }
}

/// Makes offline keys, publishes `package` on channel stable with `targets-1.key` and approves three devices
/// (keys `11…`, `22…`, `33…`) on it; returns the offline key directory.
pub fn publish_on_stable(hub: &TestHub, package: &str) -> PathBuf {
    let offline = hub.tmp.path().join("offline");
    hub.ok(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    let key = offline.join("targets-1.key");
    hub.ok(&["release", "publish", package, "--channel", "stable", "--key", key.to_str().unwrap()]);
    for k in ["11", "22", "33"] {
        hub.ok(&["device", "approve", &k.repeat(32), "--channel", "stable"]);
    }
    offline
}

/// Everything production reads: the TUF repository's files, every device record and every release (canonical
/// bytes), and what the director would assign each device now (current package, eligible packages).
#[derive(Debug, PartialEq)]
pub struct Production {
    pub files: std::collections::BTreeMap<PathBuf, Vec<u8>>,
    pub devices: Vec<u8>,
    pub releases: Vec<u8>,
    pub assigned: Vec<(Option<Digest>, Vec<Digest>)>,
}

pub fn production(hub: &TestHub) -> Production {
    let mut files = std::collections::BTreeMap::new();
    fn walk(dir: &Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out)
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    walk(&hub.dir().join("repository"), &mut files);
    let reg = outpost_hub::Registry::open(&hub.dir(), Arc::new(ManualClock::new(1_795_881_600))).unwrap();
    let devices = reg.devices().unwrap();
    let releases: Vec<(String, outpost_hub::rollouts::ReleaseRecord)> = reg.releases().unwrap();
    let repo = outpost_hub::tuf::TufRepo::new(&hub.dir(), outpost_hub::tuf::Expiries::default());
    let director = outpost_hub::director::Director::new(&repo);
    let assigned = devices.iter().map(|d| director.expected_models(&reg, d, 1_795_881_600).unwrap()).collect();
    Production { files, devices: cbor(&devices), releases: cbor(&releases), assigned }
}

/// Canonical bytes of records, for a byte-for-byte comparison.
pub fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    outpost_shared::canonical::to_vec(v).unwrap()
}

/// A real `outpost-hub serve` process on `hub` (killed and reaped when dropped), its stderr read line by line.
pub struct ServeProcess {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ServeProcess {
    pub fn start(hub: &TestHub, extra: &[&str]) -> ServeProcess {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_outpost-hub"))
            .arg("--data-dir")
            .arg(hub.dir())
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        ServeProcess { child, lines }
    }

    /// The next line of the log, if one comes within `within`.
    pub fn lines_within(&self, within: std::time::Duration) -> Result<String, std::sync::mpsc::RecvTimeoutError> {
        self.lines.recv_timeout(within)
    }

    /// The first line of the log that `matches`, waiting at most `within`.
    #[allow(clippy::disallowed_methods)] // deadlines for a real process
    pub fn until(&self, what: &str, within: std::time::Duration, matches: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("no {what} from serve within {within:?}: {e}"),
            }
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
