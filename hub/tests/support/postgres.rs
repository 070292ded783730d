//! A throwaway PostgreSQL for tests: Debian's server binaries, a cluster made with `initdb` in a temporary directory
//! and listening only on a Unix socket there, run as an unprivileged user; one per test process, a fresh database
//! per test ([`database`]).
//!
//! The server stops, and its directory goes, when the test process ends however it ends: it runs under a shell that
//! waits for the end of a pipe the test process holds to close. Without the binaries the tests fail (never skip),
//! naming the package to install.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Where Debian puts each major version's server binaries.
const DEBIAN_DIR: &str = "/usr/lib/postgresql";
/// The user the server runs as when the tests run as root (initdb and postgres refuse root).
const UNPRIVILEGED_USER: &str = "nobody";
/// The database superuser the cluster is made with.
pub const SUPERUSER: &str = "outpost";
/// Port number: with no TCP listener it only names the socket file, inside the cluster's own directory.
const PORT: u16 = 5432;
/// How often, and how many times, to ask whether the server accepts connections (a minute in all).
const READY_POLL: Duration = Duration::from_millis(100);
const READY_POLLS: u32 = 600;

/// A running cluster.
pub struct Cluster {
    /// Its directory: `data/` and the socket.
    pub dir: PathBuf,
    bin: PathBuf,
    /// The write end of the pipe the keeper shell reads: closed (at process exit), the server stops.
    _keeper: Mutex<(Child, ChildStdin)>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

/// The directory holding `initdb`, `postgres` and `psql`: `$OUTPOST_PG_BIN`, else the newest Debian version's.
fn binaries() -> PathBuf {
    let complete = |bin: &Path| ["initdb", "postgres", "pg_isready", "psql"].iter().all(|b| bin.join(b).exists());
    let found = match std::env::var_os("OUTPOST_PG_BIN") {
        Some(dir) => Some(PathBuf::from(dir)).filter(|bin| complete(bin)),
        None => {
            let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_DIR)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
                .filter(|(_, bin)| complete(bin))
                .collect();
            versions.sort();
            versions.pop().map(|(_, bin)| bin)
        }
    };
    match found {
        Some(bin) => bin,
        None => panic!(
            "PostgreSQL's server binaries are missing (looked for initdb, postgres, pg_isready and psql in \
             {DEBIAN_DIR}/*/bin, \
             or $OUTPOST_PG_BIN): install Debian's `postgresql` package (`.ci/run` does). The PostgreSQL store \
             tests do not skip without it."
        ),
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// `program` from `bin`, run as the unprivileged user when the tests run as root.
fn command(bin: &Path, program: &str) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", UNPRIVILEGED_USER, "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

fn run(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: cannot run {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Cluster {
    fn start() -> Cluster {
        let bin = binaries();
        // Made by the user the server runs as, so it owns everything in it and can remove it at the end; a name
        // left behind by an earlier process with the same id is passed over.
        let dir = (0..100)
            .map(|n| std::env::temp_dir().join(format!("outpost-pg-{}-{n}", std::process::id())))
            .find(|dir| {
                let mut mkdir = if running_as_root() {
                    let mut c = Command::new("runuser");
                    c.args(["-u", UNPRIVILEGED_USER, "--"]);
                    c
                } else {
                    Command::new("env")
                };
                mkdir.args(["mkdir", "-m", "700"]).arg(dir).stderr(Stdio::null());
                mkdir.status().is_ok_and(|s| s.success())
            })
            .expect("making a directory for the PostgreSQL cluster in the temporary directory");
        let data = dir.join("data");
        let mut initdb = command(&bin, "initdb");
        initdb.arg("-D").arg(&data).args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-locale", "--no-sync"]);
        run(initdb, "initdb");
        // The keeper: starts the server, waits for its stdin to close (the test process ended), then stops the
        // server fast and removes the directory.
        let script = r#"
            "$1/postgres" -D "$2/data" -k "$2" -p "$3" -c listen_addresses= -c fsync=off -c synchronous_commit=off \
                -c full_page_writes=off > "$2/server.log" 2>&1 &
            pid=$!
            cat > /dev/null
            kill -INT "$pid"
            wait "$pid"
            rm -rf "$2"
        "#;
        let mut keeper = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", UNPRIVILEGED_USER, "--", "sh", "-c", script, "keeper"]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", script, "keeper"]);
            c
        };
        let mut child = keeper
            .arg(&bin)
            .arg(&dir)
            .arg(PORT.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the PostgreSQL keeper shell");
        let stdin = child.stdin.take().expect("the keeper's stdin");
        let cluster = Cluster { dir, bin, _keeper: Mutex::new((child, stdin)) };
        cluster.wait_ready();
        cluster
    }

    fn wait_ready(&self) {
        for _ in 0..READY_POLLS {
            let status = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &PORT.to_string(), "-U", SUPERUSER, "-q"])
                .status();
            if status.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(READY_POLL);
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        panic!("PostgreSQL did not accept connections within {:?}; its log:\n{log}", READY_POLL * READY_POLLS);
    }

    /// Runs one SQL statement as the superuser in `db`; returns what psql printed (unaligned, tuples only).
    pub fn sql(&self, db: &str, statement: &str) -> String {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.arg("-h").arg(&self.dir).args([
            "-p",
            &PORT.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            statement,
        ]);
        run(psql, statement)
    }

    /// The connection string of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("host={} port={PORT} user={SUPERUSER} dbname={db}", self.dir.display())
    }
}

/// The test process's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

/// A new, empty database in the test process's cluster; returns its name and connection string.
pub fn database() -> (String, String) {
    let c = cluster();
    let name = format!("t{}", NEXT_DATABASE.fetch_add(1, Ordering::Relaxed));
    c.sql("postgres", &format!("CREATE DATABASE {name}"));
    let url = c.url(&name);
    (name, url)
}
