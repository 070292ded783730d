//! Firmware-class packages on the hub: added without tract, published like models, never assigned as a device's
//! own target, and assigned per secondary with a compact manifest the secondary's own verifier accepts.

mod support;

use outpost_firmware::verify::{Freshness, ManifestError, Policy, verify_manifest};
use outpost_hub::director::Director;
use outpost_hub::registry::RegistryError;
use outpost_hub::tuf::{GenerateOptions, Key, TufRepo};
use outpost_shared::director::{self, Assignment};
use outpost_shared::rng::SeededRng;
use outpost_shared::testkit::{AffineManifest, FirmwareManifest, firmware_image};
use outpost_shared::{Digest, package};
use support::{TestHub, stderr, stdout};

const NOW: u64 = 1_795_881_600;
const HARDWARE: &str = "stm32h743-outpost-r2";
const GATEWAY: &str = "0707070707070707070707070707070707070707070707070707070707070707";

fn add_firmware(hub: &TestHub, m: &FirmwareManifest, image: &[u8]) -> Digest {
    let stem = format!("{}-{}", m.name, m.version);
    let (image_path, manifest_path) = hub.write_files(&stem, image, &m.toml());
    hub.open().add(&image_path, &manifest_path).unwrap().digest
}

#[test]
fn firmware_package_is_added_by_the_cli_without_tract() {
    let hub = TestHub::new();
    let m = FirmwareManifest::new("sensor-fw", "1.0.0", HARDWARE, 3);
    let image = firmware_image(3_000, 2);
    let (image_path, manifest_path) = hub.write_files("sensor-fw", &image, &m.toml());
    let out = hub.cli(&["package", "add", image_path.to_str().unwrap(), "--manifest", manifest_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("firmware image"), "{}", stderr(&out));
    let digest: Digest = stdout(&out).trim().parse().unwrap();
    assert_eq!(digest, package::digest_of_parts(&m.manifest().to_cbor(), &image));
    let show = hub.cli(&["package", "show", &digest.to_hex()]);
    assert!(stdout(&show).contains(&format!("hardware {HARDWARE}, release counter 3")), "{}", stdout(&show));
}

#[test]
fn empty_firmware_image_is_refused() {
    let hub = TestHub::new();
    let m = FirmwareManifest::new("sensor-fw", "1.0.0", HARDWARE, 3);
    let (image_path, manifest_path) = hub.write_files("sensor-fw", &[], &m.toml());
    let e = hub.open().add(&image_path, &manifest_path).unwrap_err();
    assert!(
        matches!(&e, RegistryError::FirmwareImage { image, problem }
            if *image == image_path && problem == "a firmware image cannot be empty"),
        "{e:?}"
    );
}

#[test]
fn bad_secondary_ids_are_refused_by_name() {
    let hub = TestHub::new();
    hub.open().device_approve(GATEWAY, "stable").unwrap();
    let e = hub.open().device_secondary_add(GATEWAY, "mcu 1", HARDWARE).unwrap_err();
    assert!(matches!(&e, RegistryError::BadSecondaryId { field: "device id", value } if value == "mcu 1"), "{e:?}");
    let long = "h".repeat(33);
    let e = hub.open().device_secondary_add(GATEWAY, "mcu-1", &long).unwrap_err();
    assert!(matches!(&e, RegistryError::BadSecondaryId { field: "hardware id", value } if *value == long), "{e:?}");
}

#[test]
fn gateway_assignment_carries_director_signed_firmware_per_secondary_and_a_model_as_its_own_target() {
    let hub = TestHub::new();
    let repo = TufRepo::new(&hub.dir(), Default::default());
    let offline = hub.tmp.path().join("offline");
    repo.generate(&offline, GenerateOptions::default(), &mut SeededRng::new(5), NOW).unwrap();
    let key_path = offline.join("targets-1.key");
    let publish = |d: &Digest| {
        let reg = hub.open();
        let (record, manifest) = (reg.record(d).unwrap().unwrap(), reg.manifest(d).unwrap().1);
        repo.publish(&record, &manifest, "stable", &Key::load(&key_path).unwrap(), &key_path, NOW).unwrap();
    };
    let (model_path, manifest_path) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    let model = hub.open().add(&model_path, &manifest_path).unwrap().digest;
    publish(&model);
    let image = firmware_image(3_000, 2);
    let fw = add_firmware(&hub, &FirmwareManifest::new("sensor-fw", "1.0.0", HARDWARE, 6), &image);
    publish(&fw); // published after the model: the newest package on the channel is firmware
    let other = add_firmware(&hub, &FirmwareManifest::new("other-fw", "1.0.0", "nrf52840-r1", 1), b"other");
    publish(&other);

    let reg = hub.open();
    reg.device_approve(GATEWAY, "stable").unwrap();
    reg.device_secondary_add(GATEWAY, "mcu-1", HARDWARE).unwrap();
    reg.device_secondary_add(GATEWAY, "mcu-2", "no-such-board").unwrap();
    let sealed = Director::new(&repo).assignment(&reg, GATEWAY, NOW).unwrap().unwrap();
    let director_key = repo.online_key("director").unwrap().public_bytes();
    let a: Assignment = director::open(&sealed, director::ASSIGNMENT_DOMAIN, &director_key).unwrap();

    assert_eq!(a.targets.len(), 1);
    assert_eq!(a.targets[0].sha256, model, "the gateway's own target is the model, never firmware");
    assert_eq!(a.secondaries.len(), 1, "a secondary with no firmware for its hardware gets nothing");
    let s = &a.secondaries[0];
    assert_eq!((s.device_id.as_str(), s.hardware_id.as_str(), s.target.sha256), ("mcu-1", HARDWARE, fw));

    // The secondary's own verifier, provisioned with the director key, accepts what the hub signed.
    let keys = [director_key];
    let policy = Policy {
        trusted_keys: &keys,
        hardware_id: HARDWARE.as_bytes(),
        device_id: b"mcu-1",
        min_release_counter: 5,
        latest_known_time: 0,
        latest_known_counter: 0,
    };
    let verified = verify_manifest(&s.manifest, &policy, Freshness::TimeToken(&s.time_token)).unwrap();
    let m = verified.manifest();
    assert_eq!((m.image_len as usize, m.image_sha256, m.release_counter), (image.len(), Digest::of(&image).0, 6));
    let other_device = Policy { device_id: b"mcu-2", ..policy };
    assert_eq!(
        verify_manifest(&s.manifest, &other_device, Freshness::TimeToken(&s.time_token)).unwrap_err(),
        ManifestError::WrongDeviceId
    );
}
