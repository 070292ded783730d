//! Router packages at publish: a router is published only if every capability it names is served — some channel
//! has a published, non-revoked model package of it — and, against the contracts those capabilities serve, every
//! route's candidates cover their niches and its fallback covers the whole route (`outpost_shared::route`).
//!
//! The contract a capability serves is its registered contract, or for an unregistered one the contract of its
//! newest published package.

use outpost_shared::director::RevocationList;
use outpost_shared::manifest::{Contract, Manifest, PackageKind};
use outpost_shared::route::Router;

use crate::director::Published;
use crate::registry::{PackageRecord, Registry, RegistryError};

/// Refuses to publish the router `record` unless the published channels serve it (see the module docs). Other
/// package kinds pass unchecked.
pub fn check_publish(
    reg: &Registry,
    record: &PackageRecord,
    manifest: &Manifest,
    published: &[Published],
    revoked: &RevocationList,
) -> Result<(), RegistryError> {
    if manifest.kind != PackageKind::Router {
        return Ok(());
    }
    let bytes = reg.model_of(record)?;
    let router = Router::from_cbor(&bytes).map_err(|problem| RegistryError::Router {
        file: format!("{}@{}", manifest.name, manifest.version).into(),
        problem,
    })?;
    let live = |p: &&Published| {
        p.is_model() && !p.channels.is_empty() && !revoked.revoked.iter().any(|r| r.digest == p.digest)
    };
    let live: Vec<&Published> = published.iter().filter(live).collect();
    let mut served: Vec<(String, Contract)> = Vec::new();
    for capability in router.capabilities() {
        let Some(newest) = live.iter().rev().find(|p| p.capability == capability) else { continue };
        let contract = match reg.capability(capability)? {
            Some(rec) => rec.capability.contract,
            None => reg.manifest(&newest.digest)?.1.contract,
        };
        served.push((capability.to_owned(), contract));
    }
    router.check(|c| served.iter().find(|(name, _)| name == c).map(|(_, contract)| contract.clone())).map_err(
        |source| RegistryError::RouterUnserved {
            router: format!("{}@{}", manifest.name, manifest.version),
            source: Box::new(source),
        },
    )
}
