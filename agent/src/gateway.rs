//! Gateway side of firmware updates: checks a firmware package the agent verified through TUF and the director
//! against the compact manifest the director signed for one secondary, then hands both to it over a [`Transport`].
//!
//! Invariant: nothing reaches a secondary unless the compact manifest verifies under the director key, names the
//! secondary and its hardware, and states exactly the length, SHA-256 and release counter of the image inside the
//! verified package ([`prepare`] is the only way to make a [`FirmwareUpdate`]). The secondary then checks it all
//! again with its own keys ([`outpost_firmware`]); the gateway is a courier, not a trust anchor.

use outpost_firmware::manifest::Manifest as Compact;
use outpost_firmware::verify::{Freshness, Policy, verify_manifest};
use outpost_firmware::{ManifestError, Slot};
use outpost_shared::director::SecondaryAssignment;
use outpost_shared::manifest::PackageKind;
use outpost_shared::{Digest, Manifest, Package, PackageError, PackageLimits};

/// Bounds and sizes of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Image bytes per chunk frame (at most what one frame of the link carries: 512 bytes on the simulated serial
    /// link of the agent's gateway tests, `agent/tests/gateway/serial.rs`).
    pub chunk_len: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig { chunk_len: 256 }
    }
}

/// Why the gateway would not hand a firmware package to a secondary, or the secondary did not take it.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The package bytes are not the target the director assigned and TUF lists (a caller mistake: only verified
    /// downloads may be prepared).
    #[error("package is {len} bytes hashing to {digest}, the verified target is {want_len} bytes {want}")]
    NotTheVerifiedTarget {
        /// Length given.
        len: u64,
        /// Digest given.
        digest: Digest,
        /// Length TUF lists.
        want_len: u64,
        /// Digest TUF lists.
        want: Digest,
    },
    /// The package does not decode.
    #[error("firmware package: {0}")]
    Package(#[from] PackageError),
    /// A model package where firmware was assigned.
    #[error("{name}@{version} is a {kind} package, not firmware")]
    NotFirmware {
        /// Package name.
        name: String,
        /// Package version.
        version: String,
        /// Its kind.
        kind: PackageKind,
    },
    /// The package is built for other hardware than the secondary it was assigned to.
    #[error("firmware for hardware {package} assigned to secondary {device_id} with hardware {secondary}")]
    WrongHardware {
        /// The secondary.
        device_id: String,
        /// Hardware id in the package manifest.
        package: String,
        /// Hardware id of the secondary.
        secondary: String,
    },
    /// The compact manifest or time token fails the checks the secondary would make.
    #[error("compact manifest for secondary {device_id}: {source}")]
    CompactManifest {
        /// The secondary.
        device_id: String,
        /// Why.
        source: ManifestError,
    },
    /// The compact manifest states something other than the verified package holds.
    #[error("compact manifest for secondary {device_id} says {field} {manifest}, the verified package has {package}")]
    ManifestMismatch {
        /// The secondary.
        device_id: String,
        /// `image length`, `image sha256` or `release counter`.
        field: &'static str,
        /// The manifest's value.
        manifest: String,
        /// The package's value.
        package: String,
    },
    /// The link to the secondary failed.
    #[error("link to secondary: {0}")]
    Transport(Box<dyn std::error::Error + Send + Sync>),
    /// The secondary refused (it keeps booting its current image).
    #[error("secondary refused: {0:?}")]
    Refused(Refusal),
    /// The secondary answered something the protocol does not allow at this point.
    #[error("secondary answered {got:?} to {step}")]
    Unexpected {
        /// What the gateway had sent.
        step: &'static str,
        /// What came back.
        got: Reply,
    },
    /// After the reboot the secondary does not run the new image (it reverted).
    #[error("secondary runs release {running} in slot {slot:?} after the reboot, not {wanted}")]
    NotAdopted {
        /// Release it runs.
        running: u64,
        /// Release delivered.
        wanted: u64,
        /// Slot it runs.
        slot: Slot,
    },
}

/// Why a secondary refused a manifest or an image (one byte on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Signature, envelope or key.
    BadSignature,
    /// Another hardware id.
    WrongHardware,
    /// Another device id.
    WrongDevice,
    /// Release counter below the stored one.
    Rollback,
    /// The manifest expired, or its freshness evidence is missing, stale or for another device.
    Stale,
    /// The image is longer, shorter or hashes differently than the manifest says.
    ImageMismatch,
    /// The image does not fit a slot.
    TooLarge,
    /// An update is already pending.
    Busy,
    /// Flash failure, unprovisioned device, or a frame out of sequence.
    Failed,
}

/// What a secondary answers to a manifest, the end of an image, or a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The manifest verified; the inactive slot is erased and waits for the image.
    Accepted,
    /// The image verified and is pending: the next boot trial-boots it.
    Installed,
    /// The secondary booted.
    Booted {
        /// The slot it runs.
        slot: Slot,
        /// A trial boot of a new image (then confirmed by its self-test, or reverted at the next boot).
        trial: bool,
        /// An unconfirmed image was abandoned.
        reverted: bool,
    },
    /// Refused; nothing changed on the secondary's boot path.
    Refused(Refusal),
}

/// What a secondary reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondaryStatus {
    /// The confirmed slot.
    pub active: Slot,
    /// The release counter of the image in that slot.
    pub active_release: u64,
    /// A verified, unconfirmed slot.
    pub pending: Option<Slot>,
    /// The anti-rollback counter.
    pub min_release_counter: u64,
}

/// The link to one secondary: send the manifest, stream the image, read results.
pub trait Transport {
    /// Link failures (not refusals, which are [`Reply::Refused`]).
    type Error: std::error::Error + Send + Sync + 'static;
    /// Sends the time token and the signed compact manifest; the secondary verifies both and answers.
    fn send_manifest(&mut self, manifest: &[u8], time_token: &[u8]) -> Result<Reply, Self::Error>;
    /// Sends the next image chunk (no answer: the link's bounded buffer is the flow control).
    fn send_chunk(&mut self, chunk: &[u8]) -> Result<(), Self::Error>;
    /// Ends the image; the secondary checks length and hash and answers.
    fn end_image(&mut self) -> Result<Reply, Self::Error>;
    /// Asks the secondary to reboot into whatever its boot state says.
    fn reboot(&mut self) -> Result<Reply, Self::Error>;
    /// Reads the secondary's state.
    fn status(&mut self) -> Result<SecondaryStatus, Self::Error>;
}

/// A firmware image and its compact manifest, checked against each other and the verified package. Only
/// [`prepare`] makes one.
#[derive(Debug, Clone)]
pub struct FirmwareUpdate {
    device_id: String,
    package: Digest,
    release_counter: u64,
    manifest: Vec<u8>,
    time_token: Vec<u8>,
    image: Vec<u8>,
}

impl FirmwareUpdate {
    /// The secondary it is for.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }
    /// The package digest (the TUF target).
    pub fn package(&self) -> Digest {
        self.package
    }
    /// The release counter it installs.
    pub fn release_counter(&self) -> u64 {
        self.release_counter
    }
    /// The signed compact manifest.
    pub fn manifest(&self) -> &[u8] {
        &self.manifest
    }
    /// The signed time token.
    pub fn time_token(&self) -> &[u8] {
        &self.time_token
    }
    /// The image bytes.
    pub fn image(&self) -> &[u8] {
        &self.image
    }
}

/// The firmware part of an assignment that passed the director signature and TUF checks, with the director key
/// that signed it (and the compact manifests in it).
#[derive(Debug, Clone)]
pub struct VerifiedFirmware {
    /// The director key TUF authorises.
    pub director_key: [u8; 32],
    /// Per secondary: its firmware target, compact manifest and time token.
    pub secondaries: Vec<SecondaryAssignment>,
}

/// Checks `package` (already downloaded and matched against the TUF target) against what the director signed
/// for `secondary`: the same target, a firmware package for its hardware, and a compact manifest that verifies
/// under `director_key` for this secondary and states the image's exact length, SHA-256 and release counter.
///
/// # Errors
/// [`GatewayError`] naming the first check that failed; nothing is sent.
pub fn prepare(
    secondary: &SecondaryAssignment,
    package: &[u8],
    director_key: &[u8; 32],
) -> Result<FirmwareUpdate, GatewayError> {
    let (digest, len) = (Digest::of(package), package.len() as u64);
    if digest != secondary.target.sha256 || len != secondary.target.length {
        return Err(GatewayError::NotTheVerifiedTarget {
            len,
            digest,
            want_len: secondary.target.length,
            want: secondary.target.sha256,
        });
    }
    let decoded = Package::decode(package, &PackageLimits::default())?;
    let fw = firmware_of(&decoded.manifest)?;
    let device_id = secondary.device_id.clone();
    if fw.hardware_id != secondary.hardware_id {
        return Err(GatewayError::WrongHardware {
            device_id,
            package: fw.hardware_id.clone(),
            secondary: secondary.hardware_id.clone(),
        });
    }
    let keys = [*director_key];
    // The secondary's own checks, minus its stored counters, which only it knows.
    let policy = Policy {
        trusted_keys: &keys,
        hardware_id: secondary.hardware_id.as_bytes(),
        device_id: secondary.device_id.as_bytes(),
        min_release_counter: 0,
        latest_known_time: 0,
        latest_known_counter: 0,
    };
    let verified = verify_manifest(&secondary.manifest, &policy, Freshness::TimeToken(&secondary.time_token))
        .map_err(|source| GatewayError::CompactManifest { device_id: device_id.clone(), source })?;
    check_matches(&device_id, verified.manifest(), decoded.model, fw.release_counter)?;
    Ok(FirmwareUpdate {
        device_id,
        package: digest,
        release_counter: fw.release_counter,
        manifest: secondary.manifest.clone(),
        time_token: secondary.time_token.clone(),
        image: decoded.model.to_vec(),
    })
}

/// The `[firmware]` table of a firmware package's manifest; refuses any other kind.
pub fn firmware_of(m: &Manifest) -> Result<&outpost_shared::manifest::Firmware, GatewayError> {
    match (&m.kind, &m.firmware) {
        (PackageKind::Firmware, Some(fw)) => Ok(fw),
        _ => Err(GatewayError::NotFirmware { name: m.name.clone(), version: m.version.to_string(), kind: m.kind }),
    }
}

/// The compact manifest must state the image's exact length, SHA-256 and release counter.
fn check_matches(device_id: &str, m: &Compact<'_>, image: &[u8], release_counter: u64) -> Result<(), GatewayError> {
    let mismatch = |field, manifest: String, package: String| {
        Err(GatewayError::ManifestMismatch { device_id: device_id.to_owned(), field, manifest, package })
    };
    if u64::from(m.image_len) != image.len() as u64 {
        return mismatch("image length", m.image_len.to_string(), image.len().to_string());
    }
    let sha = Digest::of(image);
    if m.image_sha256 != sha.0 {
        return mismatch("image sha256", Digest(m.image_sha256).to_hex(), sha.to_hex());
    }
    if m.release_counter != release_counter {
        return mismatch("release counter", m.release_counter.to_string(), release_counter.to_string());
    }
    Ok(())
}

/// Hands a prepared update to the secondary: manifest, image, reboot, then checks that it runs the new release.
/// A secondary that already runs the release is left alone.
///
/// # Errors
/// [`GatewayError::Refused`] if the secondary refused (it keeps its current image), [`GatewayError::NotAdopted`]
/// if it reverted after the reboot, or a link failure.
pub fn deliver<T: Transport>(
    update: &FirmwareUpdate,
    link: &mut T,
    config: &DeliveryConfig,
) -> Result<SecondaryStatus, GatewayError> {
    let before = link.status().map_err(transport)?;
    if before.pending.is_none() && before.active_release == update.release_counter {
        return Ok(before);
    }
    send(link, &update.manifest, &update.time_token, &update.image, config)?;
    match link.reboot().map_err(transport)? {
        Reply::Booted { .. } => {}
        Reply::Refused(r) => return Err(GatewayError::Refused(r)),
        got => return Err(GatewayError::Unexpected { step: "reboot", got }),
    }
    let status = link.status().map_err(transport)?;
    if status.pending.is_some() || status.active_release != update.release_counter {
        return Err(GatewayError::NotAdopted {
            running: status.active_release,
            wanted: update.release_counter,
            slot: status.active,
        });
    }
    Ok(status)
}

/// The wire steps of an install, without the gateway's checks: manifest, chunks, end. [`deliver`] calls it with
/// a [`FirmwareUpdate`]; tests call it directly to play a gateway that skips them.
///
/// # Errors
/// [`GatewayError::Refused`] when the secondary refuses the manifest or the image, or a link failure.
pub fn send<T: Transport>(
    link: &mut T,
    manifest: &[u8],
    time_token: &[u8],
    image: &[u8],
    config: &DeliveryConfig,
) -> Result<(), GatewayError> {
    match link.send_manifest(manifest, time_token).map_err(transport)? {
        Reply::Accepted => {}
        Reply::Refused(r) => return Err(GatewayError::Refused(r)),
        got => return Err(GatewayError::Unexpected { step: "manifest", got }),
    }
    for chunk in image.chunks(config.chunk_len.max(1)) {
        link.send_chunk(chunk).map_err(transport)?;
    }
    match link.end_image().map_err(transport)? {
        Reply::Installed => Ok(()),
        Reply::Refused(r) => Err(GatewayError::Refused(r)),
        got => Err(GatewayError::Unexpected { step: "end of image", got }),
    }
}

fn transport(e: impl std::error::Error + Send + Sync + 'static) -> GatewayError {
    GatewayError::Transport(Box::new(e))
}
