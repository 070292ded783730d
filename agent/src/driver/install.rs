//! Installing a package: the download into staging (resumed, bounded, verified), staging into the inactive slot
//! (policy after download, read-only files, smoke test on the plan that will serve), and the swap to serve it.

use super::*;

impl Agent {
    /// Downloads into the staging file, resuming from what is there, bounded by the TUF length, then checks
    /// length and hash. Returns the loop's event and, when the download failed because the hub replica could not
    /// be reached, the error (the check then moves to the next replica, which resumes the download).
    pub(super) async fn download(&mut self, source: &dyn Transport, t: &Target) -> (Event, Option<CheckError>) {
        let started = self.clock.monotonic();
        let result = self.try_download(source, t).await;
        let took = self.clock.monotonic().saturating_sub(started);
        self.models.metrics().downloaded(result.is_ok(), took.as_secs_f64());
        let (package, ms) = (t.digest.short(), took.as_millis() as u64);
        match result {
            Ok(()) => {
                tracing::info!(package, path = %t.path, bytes = t.length, took_ms = ms, "downloaded and verified {}", t.path);
                (Event::Downloaded, None)
            }
            Err(e) => {
                tracing::warn!(package, path = %t.path, error = %e, took_ms = ms, "download of {} failed", t.path);
                let event = Event::DownloadFailed(e.to_string());
                (event, e.hub_unreachable().then_some(e))
            }
        }
    }

    pub(super) async fn try_download(&mut self, source: &dyn Transport, t: &Target) -> Result<(), CheckError> {
        let staging = self.layout.staging(&t.digest);
        std::fs::create_dir_all(staging.parent().unwrap_or(self.layout.root()))?;
        let mut have = std::fs::metadata(&staging).map(|m| m.len()).unwrap_or(0);
        if have > t.length {
            std::fs::remove_file(&staging)?;
            have = 0;
        }
        if have < t.length {
            let file = tokio::fs::OpenOptions::new().create(true).append(true).open(&staging).await;
            let mut file = Named { file: file.map_err(|e| named(&staging, e))?, path: &staging };
            let stored = director::stored_target_path(&t.path, &t.digest);
            transport::download(source, &stored, have, t.length, &mut file)
                .await?
                .ok_or_else(|| CheckError::Invalid(format!("the repository has no {}", t.path)))?;
            file.file.sync_all().await.map_err(|e| named(&staging, e))?;
        }
        let (len, digest) = device::hash_file(&staging)?;
        if len != t.length || digest != t.digest {
            std::fs::remove_file(&staging)?;
            return Err(CheckError::Invalid(format!(
                "downloaded {len} bytes hashing to {}, TUF lists {} bytes {}",
                digest.short(),
                t.length,
                t.digest.short()
            )));
        }
        Ok(())
    }

    /// Unpacks the verified package into `capability`'s `slot` (never the active one), loads it from there as it
    /// will serve and runs its smoke test on that plan.
    pub(super) fn stage(&mut self, capability: &str, t: &Target, slot: Slot) -> Event {
        let package = t.digest.short();
        match self.try_stage(capability, t, slot) {
            Ok(()) => {
                tracing::info!(package, path = %t.path, slot = ?slot, "staged {} into slot {slot:?} (smoke test passed)", t.path);
                Event::Staged
            }
            Err(StageError::Refused(r)) => {
                tracing::warn!(package, rule = %r.rule, "site policy refused {}: rule `{}`: {}", t.path, r.rule, r.reason);
                let _ = std::fs::remove_file(self.layout.staging(&t.digest));
                Event::Refused(*r)
            }
            Err(StageError::Failed(e)) => {
                tracing::warn!(package, error = %e, "staging {} failed", t.path);
                Event::StageFailed(e)
            }
            Err(StageError::Storage(e)) => {
                tracing::warn!(package, error = %e, "staging {} could not be written (tried again at the next check)", t.path);
                Event::StageInterrupted(e)
            }
        }
    }

    fn try_stage(&mut self, capability: &str, t: &Target, slot: Slot) -> Result<(), StageError> {
        let state = self.lanes.lane(capability).map(|l| &l.state);
        if state.and_then(|s| s.active.as_ref()).is_some_and(|a| a.slot == slot) {
            return Err("refusing to write into the active slot".to_owned().into());
        }
        let last_known = state.map_or(0, |s| s.last_known_time);
        let staging = self.layout.staging(&t.digest);
        let bytes = std::fs::read(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
        if Digest::of(&bytes) != t.digest {
            return Err("staged package does not match its digest".to_owned().into());
        }
        let package = Package::decode(&bytes, &PackageLimits::default()).map_err(|e| e.to_string())?;
        refuse_non_model(&package.manifest)?;
        let named =
            capability != super::lanes::UNNAMED_LANE && self.lanes.lane(capability).is_some_and(|l| !l.legacy_slots);
        if named && package.manifest.capability != capability {
            // TUF stated another capability than the verified manifest: the lane (its slots, its memory) would lie.
            return Err(format!(
                "the package serves `{}`, not `{capability}` as its TUF metadata states",
                package.manifest.capability
            )
            .into());
        }
        if let Some(policy) = &self.policy {
            let advertised = self.advertised.get(&t.digest);
            let now = self.clock.wall().max(last_known);
            let model_len = package.model.len() as u64;
            if let Some(r) = policy.after_download(t.digest, &package.manifest, model_len, advertised, now, false) {
                return Err(StageError::Refused(Box::new(r)));
            }
        }
        let dir = self.slot_dir(capability, slot);
        // The slot's own disk failing is not the package's fault: it is staged again at the next check.
        let io = |e: std::io::Error| StageError::Storage(format!("{}: {e}", dir.display()));
        if dir.exists() {
            make_writable(&dir).map_err(io)?;
            std::fs::remove_dir_all(&dir).map_err(io)?;
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        device::write_atomic(&dir.join("model.onnx"), package.model).map_err(io)?;
        device::write_atomic(&dir.join("manifest.cbor"), package.manifest_cbor).map_err(io)?;
        device::write_atomic(&dir.join("digest"), t.digest.to_hex().as_bytes()).map_err(io)?;
        for f in ["model.onnx", "manifest.cbor", "digest"] {
            set_read_only(&dir.join(f)).map_err(io)?;
        }
        drop(bytes);
        // Load what the slot now holds, exactly as it will serve, and smoke-test that plan.
        let served = load_slot(&dir, &t.digest).map_err(|e| e.to_string())?;
        self.staged.insert(capability.to_owned(), Arc::new(served));
        let _ = std::fs::remove_file(&staging);
        Ok(())
    }

    /// Loads one of `capability`'s slots (read-only) for serving and swaps it into the capability's handle;
    /// requests in flight finish on the old model.
    pub(super) fn activate(&mut self, capability: &str, installed: &Installed) -> Result<(), CheckError> {
        let handle = self.handle_of(capability);
        if handle.current().is_some_and(|a| *a.digest() == installed.target.digest) {
            return Ok(());
        }
        let served = match (self.staged.remove(capability), self.previous.remove(capability)) {
            (Some(s), _) if *s.digest() == installed.target.digest => s,
            (_, Some(p)) if *p.digest() == installed.target.digest => p,
            _ => Arc::new(load_slot(&self.slot_dir(capability, installed.slot), &installed.target.digest)?),
        };
        tracing::info!(package = installed.target.digest.short(), path = %installed.target.path, slot = ?installed.slot, "serving {}", installed.target.path);
        if let Some(routes) = &self.routes {
            routes.mark(&served.manifest().capability, None);
        }
        let replaced = handle.swap(served);
        let on_trial = self.lanes.lane(capability).map(|l| &l.state.phase);
        if let (Some(outpost_shared::update::Phase::Health { .. }), Some(replaced)) = (on_trial, replaced) {
            self.previous.insert(capability.to_owned(), replaced);
        }
        Ok(())
    }
}

/// Why staging stopped: the policy refused the verified manifest, or the package is unusable.
enum StageError {
    Refused(Box<Refusal>),
    Failed(String),
    /// The device's storage refused the write (full, failing).
    Storage(String),
}

impl From<String> for StageError {
    fn from(e: String) -> Self {
        StageError::Failed(e)
    }
}

/// Reads a slot's files (opened read-only) and loads the model for serving (its smoke test runs on the plan
/// that will serve).
pub fn load_slot(dir: &Path, digest: &Digest) -> Result<Served, CheckError> {
    let recorded = std::fs::read_to_string(dir.join("digest"))?;
    if recorded.trim() != digest.to_hex() {
        return Err(CheckError::Invalid(format!(
            "slot {} holds {}, not {}",
            dir.display(),
            recorded.trim(),
            digest.short()
        )));
    }
    let manifest = Manifest::from_cbor(&std::fs::read(dir.join("manifest.cbor"))?)
        .map_err(|e| CheckError::Invalid(e.to_string()))?;
    let model_bytes = std::fs::read(dir.join("model.onnx"))?;
    Served::load(manifest, &model_bytes, *digest).map_err(|e| CheckError::Invalid(e.to_string()))
}

/// The agent only ever loads model packages; a firmware package assigned as its own target is refused by name.
pub(super) fn refuse_non_model(m: &Manifest) -> Result<(), String> {
    match m.kind {
        outpost_shared::manifest::PackageKind::Model => Ok(()),
        kind => Err(format!(
            "{}@{} is a {kind} package: the agent runs only model packages (firmware goes to secondaries)",
            m.name, m.version
        )),
    }
}

fn set_read_only(path: &Path) -> std::io::Result<()> {
    let mut perms = std::fs::metadata(path)?.permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(path, perms)
}

fn make_writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// An I/O error that names the file it happened to (a full disk says which one).
fn named(path: &std::path::Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The staging file as the download writes it: its write errors name it.
struct Named<'a> {
    file: tokio::fs::File,
    path: &'a std::path::Path,
}

impl tokio::io::AsyncWrite for Named<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let path = self.path;
        std::pin::Pin::new(&mut self.file).poll_write(cx, buf).map_err(|e| named(path, e))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let path = self.path;
        std::pin::Pin::new(&mut self.file).poll_flush(cx).map_err(|e| named(path, e))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let path = self.path;
        std::pin::Pin::new(&mut self.file).poll_shutdown(cx).map_err(|e| named(path, e))
    }
}
