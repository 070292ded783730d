//! A gateway agent and a secondary behind it, against a real hub over real QUIC: the hub publishes a firmware
//! package, the gateway verifies it fully (TUF + director) and hands it over a simulated serial link to an
//! `outpost-firmware` secondary, which verifies it partially, writes its inactive slot, boots it and confirms.
//! Attacks at the gateway boundary: a compact manifest that does not match the verified image, an image one byte
//! different, and a firmware package assigned as the gateway's own model.

mod support;
// The simulated serial link, used by this test alone (a file directly in `tests/` would be a test of its own).
#[path = "gateway/serial.rs"]
mod serial;

use outpost_agent::config::{self, AgentConfig};
use outpost_agent::driver::{Agent, CheckError, init_device};
use outpost_agent::gateway::{self, DeliveryConfig, FirmwareUpdate, GatewayError, Refusal, Reply, Transport};
use outpost_firmware::Slot;
use outpost_hub::blobs::BlobStore;
use outpost_hub::registry::PackageRecord;
use outpost_shared::manifest::PackageKind;
use outpost_shared::testkit::{AffineManifest, FirmwareManifest, firmware_image};
use outpost_shared::update::Phase;
use outpost_shared::{Digest, package};
use serial::{SecondaryConfig, SerialLink, spawn_secondary};
use support::{NOW, World};

const HARDWARE: &str = "stm32h743-outpost-r2";
const MCU: &str = "mcu-1";
const OLD_RELEASE: u64 = 5;
const NEW_RELEASE: u64 = 6;

/// A gateway device approved on `stable` with one secondary `MCU` of `HARDWARE` behind it.
async fn gateway_device(w: &World) -> Agent {
    let (addr, hub_key) = w.serve().await;
    let dir = w.tmp.path().join("gateway");
    let key = init_device(&dir, &w.root(), [3; 32]).unwrap();
    let reg = w.registry();
    reg.device_approve(&key, "stable").unwrap();
    reg.device_secondary_add(&key, MCU, HARDWARE).unwrap();
    let text = config::render(&addr.to_string(), &hub_key.to_hex());
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    Agent::open(AgentConfig::parse(&text, &path).unwrap(), w.clock.clone()).unwrap()
}

/// The secondary as it left the factory: the old image in slot A, trusting the hub's director key.
fn secondary(w: &World) -> SerialLink {
    let director = w.repo.online_key("director").unwrap().public_bytes();
    let config = SecondaryConfig::new(vec![director], HARDWARE, MCU, firmware_image(2_500, 1));
    spawn_secondary(SecondaryConfig { initial_release: OLD_RELEASE, ..config })
}

fn new_firmware() -> (FirmwareManifest, Vec<u8>) {
    (FirmwareManifest::new("sensor-fw", "1.1.0", HARDWARE, NEW_RELEASE), firmware_image(3_000, 2))
}

/// Runs a check and returns what the gateway verified for `MCU`.
async fn checked_firmware(agent: &mut Agent) -> Result<FirmwareUpdate, CheckError> {
    agent.check().await.unwrap();
    let mut firmware = agent.take_firmware();
    assert_eq!(firmware.len(), 1, "one secondary, one assignment");
    let (device_id, update) = firmware.remove(0);
    assert_eq!(device_id, MCU);
    update
}

fn assert_runs_old_image(link: &mut SerialLink) {
    let booted = link.reboot().unwrap();
    assert_eq!(booted, Reply::Booted { slot: Slot::A, trial: false, reverted: false });
    let status = link.status().unwrap();
    assert_eq!((status.active, status.active_release, status.pending), (Slot::A, OLD_RELEASE, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_verifies_firmware_and_the_secondary_installs_boots_and_confirms_it() {
    let w = World::new();
    let (model, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (manifest, image) = new_firmware();
    let (fw, _) = w.add_and_publish_firmware(&manifest, &image, "stable");
    let mut agent = gateway_device(&w).await;

    let update = checked_firmware(&mut agent).await.unwrap();
    assert!(
        matches!(&agent.state().phase, Phase::Health { target, .. } if target.digest == model),
        "the gateway's own update loop took the model, not the firmware: {:?}",
        agent.state().phase
    );
    assert_eq!((update.package(), update.release_counter(), update.image()), (fw, NEW_RELEASE, &image[..]));

    let mut link = secondary(&w);
    let status = gateway::deliver(&update, &mut link, &DeliveryConfig::default()).unwrap();
    assert_eq!((status.active, status.active_release, status.pending), (Slot::B, NEW_RELEASE, None));
    assert_eq!(status.min_release_counter, NEW_RELEASE, "confirmed: the anti-rollback counter moved up");
    // Confirmed, not on trial: the next boot stays on the new image.
    assert_eq!(link.reboot().unwrap(), Reply::Booted { slot: Slot::B, trial: false, reverted: false });
    // Delivering again changes nothing (the secondary already runs it).
    assert_eq!(gateway::deliver(&update, &mut link, &DeliveryConfig::default()).unwrap().active, Slot::B);
    link.close().unwrap();

    // A later check finds the verified package in staging and does not need the hub's bytes again.
    let again = checked_firmware(&mut agent).await.unwrap();
    assert_eq!(again.package(), fw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_manifest_not_matching_the_verified_image_is_refused_by_the_gateway() {
    let w = World::new();
    let (manifest, image) = new_firmware();
    let reg = w.registry();
    let (image_path, manifest_path) = (w.tmp.path().join("fw.bin"), w.tmp.path().join("fw.toml"));
    std::fs::write(&image_path, &image).unwrap();
    std::fs::write(&manifest_path, manifest.toml()).unwrap();
    let digest = reg.add(&image_path, &manifest_path).unwrap().digest;
    // A hub whose records were tampered with: the package is genuine, but the image hash the director copies
    // into the compact manifest is another image's (one byte different).
    let mut record = reg.record(&digest).unwrap().unwrap();
    let mut other = image.clone();
    other[100] ^= 1;
    record.model_digest = Digest::of(&other);
    w.publish_as(&record, &manifest.manifest(), "stable");
    drop(reg);
    let mut agent = gateway_device(&w).await;

    let e = checked_firmware(&mut agent).await.unwrap_err();
    assert!(matches!(&e, CheckError::Gateway(GatewayError::ManifestMismatch { field: "image sha256", .. })), "{e}");
    // And with the wrong length.
    record.model_digest = Digest::of(&image);
    record.model_len += 1;
    w.clock.advance(std::time::Duration::from_secs(2));
    w.publish_as(&record, &manifest.manifest(), "stable");
    let e = checked_firmware(&mut agent).await.unwrap_err();
    assert!(matches!(&e, CheckError::Gateway(GatewayError::ManifestMismatch { field: "image length", .. })), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_refuses_an_image_one_byte_different_and_keeps_booting_the_old_slot() {
    let w = World::new();
    let (manifest, image) = new_firmware();
    w.add_and_publish_firmware(&manifest, &image, "stable");
    let mut agent = gateway_device(&w).await;
    let update = checked_firmware(&mut agent).await.unwrap();
    let mut link = secondary(&w);

    // A gateway that skips its own checks sends the signed manifest with an image one byte different.
    let mut tampered = image.clone();
    tampered[1_234] ^= 0x40;
    let e = gateway::send(&mut link, update.manifest(), update.time_token(), &tampered, &DeliveryConfig::default())
        .unwrap_err();
    assert!(matches!(e, GatewayError::Refused(Refusal::ImageMismatch)), "{e}");
    assert_runs_old_image(&mut link);

    // One byte longer is refused the same way, and nothing is left pending.
    let mut longer = image.clone();
    longer.push(0);
    let e = gateway::send(&mut link, update.manifest(), update.time_token(), &longer, &DeliveryConfig::default())
        .unwrap_err();
    assert!(matches!(e, GatewayError::Refused(Refusal::ImageMismatch)), "{e}");
    assert_runs_old_image(&mut link);

    // The genuine image still goes through afterwards.
    let status = gateway::deliver(&update, &mut link, &DeliveryConfig::default()).unwrap();
    assert_eq!((status.active, status.active_release), (Slot::B, NEW_RELEASE));
    link.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_package_assigned_as_the_gateways_own_model_is_refused_and_never_served() {
    let w = World::new();
    let (manifest, image) = new_firmware();
    // A firmware package published with model-looking custom fields (as a compromised pipeline could), so the
    // director assigns it as the device's own target.
    let bytes = package::encode(&manifest.manifest(), &image);
    let (digest, _) = BlobStore::new(w.dir.join("blobs")).put(&bytes).unwrap();
    let mut disguised = manifest.manifest();
    disguised.kind = PackageKind::Model;
    disguised.firmware = None;
    let record = PackageRecord {
        digest,
        name: disguised.name.clone(),
        version: disguised.version.to_string(),
        package_len: bytes.len() as u64,
        model_digest: Digest::of(&image),
        model_len: image.len() as u64,
        added_at: NOW,
    };
    w.publish_as(&record, &disguised, "stable");
    let mut agent = gateway_device(&w).await;

    agent.check().await.unwrap();
    assert!(agent.active().is_none(), "nothing serves");
    assert!(agent.state().rolled_back.contains(&digest), "and the loop never tries it again");
    let error = agent.state().last_error.clone().unwrap_or_default();
    assert!(error.contains("is a firmware package"), "{error}");
}
