//! A software TPM for tests and benches: starts `swtpm` (Debian package `swtpm`) on two free loopback ports in a
//! temporary state directory, and stops it on drop.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `swtpm` process (TPM 2.0, fresh state, started up).
pub struct Swtpm {
    child: Child,
    port: u16,
    _state: tempfile::TempDir,
}

/// A port `p` such that `p` and `p + 1` are both free (the swtpm TCTI puts the control channel on `p + 1`).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no pair of free ports");
}

impl Swtpm {
    /// Starts a fresh software TPM; panics with a clear message if `swtpm` is not installed.
    pub fn start() -> Swtpm {
        for _ in 0..5 {
            let state = tempfile::tempdir().expect("temp dir");
            let port = free_port_pair();
            let child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", state.path().display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("`swtpm` must be installed for the TPM tests (Debian: apt-get install swtpm swtpm-tools)");
            let mut tpm = Swtpm { child, port, _state: state };
            for _ in 0..100 {
                // Ready once both the command and the control channel accept connections (the TCTI uses both).
                if TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", port + 1)).is_ok()
                {
                    return tpm;
                }
                if tpm.child.try_wait().ok().flatten().is_some() {
                    break; // lost a race for the port: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("swtpm did not start");
    }

    /// The TCTI string for tss-esapi.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
