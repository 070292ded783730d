//! A capability's boundary at a glance (`capability show`): what each channel serves (the champion), what it
//! would fall back to (the rollback path), the capability's suites and the champion's records on them, and the
//! owners.
//!
//! Read-only; computed from the registry, the signed TUF targets and the release records. The champion of a
//! channel is its newest published package of the capability that is neither revoked nor the package of an
//! aborted release (what the director assigns to devices outside a running rollout); the rollback path is the
//! next such package before it.

use std::collections::{BTreeMap, BTreeSet};

use outpost_shared::capability::OwnerRole;
use outpost_shared::evaluation::{EvaluationRecord, SuiteManifest};
use outpost_shared::{Digest, Manifest};

use crate::director::{Director, DirectorOpError, Published};
use crate::registry::{CapabilityRecord, PackageRecord, RegistryError};
use crate::rollouts::RolloutError;
use crate::store::Store;
use crate::tuf::TufRepo;

/// What one channel serves of a capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelState {
    /// The channel.
    pub channel: String,
    /// The package the channel serves.
    pub champion: Digest,
    /// The last good package before it, what an aborted release of the channel goes back to.
    pub rollback: Option<Digest>,
}

/// A capability and where it stands.
#[derive(Debug, Clone)]
pub struct Boundary {
    /// The capability's current definition.
    pub record: CapabilityRecord,
    /// Registered packages of the capability, with their manifests (by name, then version).
    pub packages: Vec<(PackageRecord, Manifest)>,
    /// Per channel that serves the capability: champion and rollback path (by channel name).
    pub channels: Vec<ChannelState>,
    /// Whether the hub has a TUF repository at all (no repository: nothing can be published yet).
    pub repository: bool,
    /// The registered suites of the capability.
    pub suites: Vec<(Digest, SuiteManifest)>,
    /// Each champion's evaluation records on the capability's suites, oldest first.
    pub records: BTreeMap<Digest, Vec<(Digest, EvaluationRecord)>>,
}

impl Boundary {
    /// Owner roles nobody is named for.
    pub fn missing_owners(&self) -> Vec<OwnerRole> {
        self.record.capability.owners.missing()
    }

    /// The newest record of package `d` on one of the capability's suites.
    pub fn latest_record(&self, d: &Digest) -> Option<&(Digest, EvaluationRecord)> {
        self.records.get(d).and_then(|r| r.last())
    }

    /// The registered package `d` of this capability.
    pub fn package(&self, d: &Digest) -> Option<&(PackageRecord, Manifest)> {
        self.packages.iter().find(|(r, _)| r.digest == *d)
    }
}

/// Why the boundary could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BoundaryError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The signed targets or the revocation list could not be read.
    #[error(transparent)]
    Director(#[from] DirectorOpError),
    /// The release records could not be read.
    #[error(transparent)]
    Rollouts(#[from] RolloutError),
}

/// Reads the boundary of capability `name`.
pub fn boundary(store: &Store, repo: &TufRepo, name: &str) -> Result<Boundary, BoundaryError> {
    let record =
        store.capabilities().capability(name)?.ok_or_else(|| RegistryError::UnknownCapability(name.to_owned()))?;
    let packages = store.packages();
    let mut members = Vec::new();
    for r in packages.list()? {
        let (_, m) = packages.manifest(&r.digest)?;
        if m.capability == name {
            members.push((r, m));
        }
    }
    let repository = repo.exists();
    let channels = if repository {
        let director = Director::new(repo);
        let mut excluded: BTreeSet<Digest> = director.revocations()?.revoked.iter().map(|x| x.digest).collect();
        for (_, rec) in crate::rollouts::list(store.rollouts())? {
            if matches!(rec.rollout.state, outpost_shared::rollout::State::Aborted { .. }) {
                excluded.insert(rec.rollout.release.package);
            }
        }
        let mine: BTreeSet<Digest> = members.iter().map(|(r, _)| r.digest).collect();
        champions(&director.published()?, &mine, &excluded)
    } else {
        Vec::new()
    };
    let suites: Vec<(Digest, SuiteManifest)> =
        store.evaluations().suites()?.into_iter().filter(|(_, m)| m.suite.capability == name).collect();
    let mut records = BTreeMap::new();
    for ch in &channels {
        let on_suites: Vec<(Digest, EvaluationRecord)> = store
            .evaluations()
            .evaluations(&ch.champion)?
            .into_iter()
            .filter(|(_, r)| suites.iter().any(|(d, _)| *d == r.suite))
            .collect();
        records.insert(ch.champion, on_suites);
    }
    Ok(Boundary { record, packages: members, channels, repository, suites, records })
}

/// Per channel, the newest published package in `members` not in `excluded`, and the one before it. `published`
/// is newest last, as [`Director::published`] gives it.
pub fn champions(
    published: &[Published],
    members: &BTreeSet<Digest>,
    excluded: &BTreeSet<Digest>,
) -> Vec<ChannelState> {
    let mut by_channel: BTreeMap<&str, Vec<Digest>> = BTreeMap::new();
    for p in published.iter().filter(|p| members.contains(&p.digest) && !excluded.contains(&p.digest)) {
        for c in &p.channels {
            by_channel.entry(c).or_default().push(p.digest);
        }
    }
    by_channel
        .into_iter()
        .filter_map(|(channel, ds)| {
            let (&champion, older) = ds.split_last()?;
            Some(ChannelState { channel: channel.to_owned(), champion, rollback: older.last().copied() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(n: u8, channels: &[&str]) -> Published {
        Published {
            path: format!("packages/low/p{n}"),
            digest: Digest::of(&[n]),
            length: 1,
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            published_at: u64::from(n),
            firmware: None,
            router: false,
            capability: "test.cap".into(),
        }
    }

    #[test]
    fn the_champion_is_the_newest_good_package_and_the_rollback_path_the_one_before() {
        let list = [published(1, &["stable"]), published(2, &["stable", "beta"]), published(3, &["stable"])];
        let members: BTreeSet<Digest> = (1..=3).map(|n| Digest::of(&[n])).collect();
        let revoked: BTreeSet<Digest> = [Digest::of(&[3])].into();
        let got = champions(&list, &members, &revoked);
        assert_eq!(
            got,
            vec![
                ChannelState { channel: "beta".into(), champion: Digest::of(&[2]), rollback: None },
                ChannelState { channel: "stable".into(), champion: Digest::of(&[2]), rollback: Some(Digest::of(&[1])) },
            ]
        );
        // Packages of other capabilities do not count.
        assert!(champions(&list, &BTreeSet::new(), &BTreeSet::new()).is_empty());
    }
}
