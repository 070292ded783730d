//! The site policy a device (or a site node) enforces: the declarative TOML rules plus optional WASM modules,
//! loaded together, identified by one digest, and judged on TUF metadata before download and on the manifest after.
//!
//! A policy that fails to load never replaces a good one: the last policy that loaded is kept in the device
//! directory and used instead (also across restarts), and the load error is reported.

use std::path::{Path, PathBuf};

use outpost_shared::clock::UnixSeconds;
use outpost_shared::policy::{AdvertisedPackage, Decision, Evaluation, PackageFacts, Policy};
use outpost_shared::update::Refusal;
use outpost_shared::{Digest, Manifest};

use crate::device;

/// Where a site policy comes from: the TOML file and the WASM modules run after its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    /// The declarative policy (TOML).
    pub file: PathBuf,
    /// WASM rule modules (binary or text), in order.
    pub wasm: Vec<PathBuf>,
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML is not a valid policy (the message names the line and key).
    #[error(transparent)]
    Config(#[from] outpost_shared::config::ConfigError),
    /// A WASM module does not load.
    #[error("{}: {message}", path.display())]
    Wasm {
        /// The module.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A loaded site policy.
pub struct SitePolicy {
    policy: Policy,
    #[cfg(feature = "wasm")]
    modules: Vec<crate::policy_wasm::WasmRule>,
    /// The files as loaded, for the last-good copy.
    files: Vec<(PathBuf, Vec<u8>)>,
    digest: Digest,
}

impl std::fmt::Debug for SitePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SitePolicy").field("site", &self.policy.site).field("digest", &self.digest).finish()
    }
}

impl SitePolicy {
    /// Reads and checks the policy file and every module.
    pub fn load(source: &PolicySource) -> Result<SitePolicy, PolicyError> {
        let read = |p: &Path| std::fs::read(p).map_err(|source| PolicyError::Read { path: p.into(), source });
        let mut files = vec![(source.file.clone(), read(&source.file)?)];
        for w in &source.wasm {
            files.push((w.clone(), read(w)?));
        }
        Self::from_files(files)
    }

    fn from_files(files: Vec<(PathBuf, Vec<u8>)>) -> Result<SitePolicy, PolicyError> {
        let (path, toml) = &files[0];
        let text = std::str::from_utf8(toml).map_err(|e| PolicyError::Read {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let policy = Policy::from_toml(text, path)?;
        #[cfg(feature = "wasm")]
        let modules = files[1..]
            .iter()
            .map(|(p, bytes)| {
                let name = p.file_stem().map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into_owned());
                crate::policy_wasm::WasmRule::load(&name, bytes, crate::policy_wasm::WasmLimits::default())
                    .map_err(|e| PolicyError::Wasm { path: p.clone(), message: e.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        #[cfg(not(feature = "wasm"))]
        if let Some((p, _)) = files.get(1) {
            return Err(PolicyError::Wasm {
                path: p.clone(),
                message: "this agent was built without the `wasm` feature".into(),
            });
        }
        let digest = digest_of(&files);
        Ok(SitePolicy {
            policy,
            #[cfg(feature = "wasm")]
            modules,
            files,
            digest,
        })
    }

    /// Loads `source`; if it does not load, falls back to the last good copy kept in `keep_dir` and returns the
    /// error beside it. A policy that loads becomes the new last good copy.
    pub fn load_or_last_good(source: &PolicySource, keep_dir: &Path) -> (Option<SitePolicy>, Option<PolicyError>) {
        match Self::load(source) {
            Ok(p) => {
                if let Err(e) = p.keep(keep_dir) {
                    tracing::warn!(error = %e, "cannot keep a copy of the site policy");
                }
                (Some(p), None)
            }
            Err(e) => (Self::last_good(keep_dir), Some(e)),
        }
    }

    /// The last policy that loaded, from its copy in `keep_dir`.
    pub fn last_good(keep_dir: &Path) -> Option<SitePolicy> {
        let mut files = Vec::new();
        for i in 0.. {
            let p = keep_dir.join(format!("{i}"));
            match std::fs::read(&p) {
                Ok(bytes) => files.push((p, bytes)),
                Err(_) => break,
            }
        }
        if files.is_empty() {
            return None;
        }
        Self::from_files(files).ok()
    }

    fn keep(&self, dir: &Path) -> std::io::Result<()> {
        if Self::last_good(dir).is_some_and(|p| p.digest == self.digest) {
            return Ok(());
        }
        std::fs::create_dir_all(dir)?;
        for (i, (_, bytes)) in self.files.iter().enumerate() {
            device::write_atomic(&dir.join(format!("{i}")), bytes)?;
        }
        let _ = std::fs::remove_file(dir.join(format!("{}", self.files.len())));
        Ok(())
    }

    /// The digest of the policy file and its modules, as devices report it.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The site the policy names.
    pub fn site(&self) -> Option<&str> {
        self.policy.site.as_deref()
    }

    /// Every rule's outcome (declarative first, then each module) and the decision.
    pub fn evaluate(&self, facts: &PackageFacts, now: UnixSeconds) -> Evaluation {
        let evaluation = self.policy.evaluate(facts, now);
        #[cfg(feature = "wasm")]
        let evaluation = evaluation.with(self.modules.iter().map(|m| m.decide(facts, now, self.site())));
        evaluation
    }

    /// The verdict on a target before download, from its TUF custom fields and the keys that signed it
    /// (`crate::tuf::signers`): `None` accepts. Fields that are missing or unreadable are a rejection (the policy
    /// cannot vouch for what it cannot read).
    pub fn before_download(
        &self,
        digest: Digest,
        custom: Option<&serde_json::Value>,
        signers: Vec<String>,
        now: UnixSeconds,
        by_site: bool,
    ) -> (Option<PackageFacts>, Option<Refusal>) {
        let advertised = custom
            .and_then(|c| c.get("outpost"))
            .ok_or_else(|| "the target carries no custom.outpost fields".to_owned())
            .and_then(|o| serde_json::from_value::<AdvertisedPackage>(o.clone()).map_err(|e| e.to_string()))
            .and_then(|a| a.facts());
        match advertised {
            Err(e) => {
                let reason = format!("unreadable metadata: {e}");
                (None, Some(self.refusal(digest, digest.short(), "metadata", reason, None, now, by_site)))
            }
            Ok(mut facts) => {
                facts.signers = signers;
                let refusal = self.judge(digest, &facts, now, by_site);
                (Some(facts), refusal)
            }
        }
    }

    /// The verdict on a downloaded, verified package: the manifest's facts must match what was judged before
    /// download (else reject: the manifest wins), and must pass the policy themselves.
    pub fn after_download(
        &self,
        digest: Digest,
        manifest: &Manifest,
        model_bytes: u64,
        advertised: Option<&PackageFacts>,
        now: UnixSeconds,
        by_site: bool,
    ) -> Option<Refusal> {
        let mut facts = PackageFacts::from_manifest(manifest, Some(model_bytes));
        if let Some(advertised) = advertised {
            if let Some(field) = facts.differs_from(advertised) {
                let package = format!("{}@{}", manifest.name, manifest.version);
                let reason = format!("the verified manifest's `{field}` differs from the signed target metadata");
                return Some(self.refusal(digest, package, "manifest", reason, None, now, by_site));
            }
            facts = facts.with_release_facts(advertised);
        }
        self.judge(digest, &facts, now, by_site)
    }

    fn judge(&self, digest: Digest, facts: &PackageFacts, now: UnixSeconds, by_site: bool) -> Option<Refusal> {
        let package = format!("{}@{}", facts.name, facts.version);
        match self.evaluate(facts, now).decision {
            Decision::Accept => None,
            Decision::Defer { until, rule, reason } => {
                Some(self.refusal(digest, package, &rule, reason, Some(until), now, by_site))
            }
            Decision::Reject { rule, reason } => Some(self.refusal(digest, package, &rule, reason, None, now, by_site)),
        }
    }

    #[allow(clippy::too_many_arguments)] // one flat record
    fn refusal(
        &self,
        digest: Digest,
        package: String,
        rule: &str,
        reason: String,
        until: Option<UnixSeconds>,
        at: UnixSeconds,
        by_site: bool,
    ) -> Refusal {
        Refusal { digest, package, rule: rule.into(), reason, until, policy: self.digest, at, by_site }
    }
}

fn digest_of(files: &[(PathBuf, Vec<u8>)]) -> Digest {
    let mut all = Vec::new();
    for (_, bytes) in files {
        all.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        all.extend_from_slice(bytes);
    }
    Digest::of(&all)
}
