//! The A/B update path end to end through the device seams: a good image is written, trial-booted and confirmed;
//! a wrong image never becomes pending; an unconfirmed image is abandoned for the previous slot.

mod support;

use embedded_hal_mock::eh1::delay::{CheckedDelay, NoopDelay, Transaction as DelayTransaction};
use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction as PinTransaction};
use outpost_firmware::device::{BLINK_HALF_PERIOD_MS, REVERT_BLINKS};
use outpost_firmware::slots::LayoutError;
use outpost_firmware::{
    FlashLayout, Freshness, ImageError, InstallError, Secondary, Slot, SlotConfig, SlotError, Slots,
};
use support::*;

const NOW: Freshness<'static> = Freshness::GatewayCounter(NOW_COUNTER);

fn install_pulse() -> [PinTransaction; 2] {
    [PinTransaction::set(State::High), PinTransaction::set(State::Low)]
}

#[test]
fn update_installs_trial_boots_and_confirms_new_image() {
    let keys = trusted_keys();
    let (old, new) = (old_image(), new_image());
    let mut flash = provisioned();
    let mut pin = PinMock::new(&[install_pulse(), install_pulse()].concat());
    {
        let slots = Slots::new(&mut flash, layout(), SlotConfig::default()).unwrap();
        let mut dev = Secondary::new(slots, identity(&keys), pin.clone(), NoopDelay::new());

        let before = dev.boot().unwrap();
        assert_eq!((before.slot, before.trial, before.reverted), (Slot::A, false, false));
        assert_eq!(before.descriptor.image_sha256, sha256(&old));

        install(&mut dev, &sign_manifest(&hub_key(), &manifest_for(&new, NEW_RELEASE)), &new).unwrap();
        let state = dev.slots_mut().state().unwrap().unwrap();
        assert_eq!((state.active, state.pending, state.trial_boots_left), (Slot::A, Some(Slot::B), 1));
        assert_eq!(state.latest_known_counter, NOW_COUNTER, "the observed counter becomes the floor");
        assert_eq!(state.min_release_counter, OLD_RELEASE, "the counter only moves on confirm");

        let trial = dev.boot().unwrap();
        assert_eq!((trial.slot, trial.trial, trial.reverted), (Slot::B, true, false));
        assert_eq!(trial.offset, layout().slots[1]);
        assert_eq!(trial.descriptor.image_sha256, sha256(&new));

        assert_eq!(dev.confirm().unwrap(), Slot::B);
        let state = dev.slots_mut().state().unwrap().unwrap();
        assert_eq!((state.active, state.pending, state.min_release_counter), (Slot::B, None, NEW_RELEASE));
        let after = dev.boot().unwrap();
        assert_eq!((after.slot, after.trial, after.reverted), (Slot::B, false, false));

        // The next update goes to the other slot again, overwriting the old image and never the running one.
        let newer = image(1_234, 3);
        install(&mut dev, &sign_manifest(&hub_key(), &manifest_for(&newer, NEW_RELEASE + 1)), &newer).unwrap();
        assert_eq!(dev.slots_mut().state().unwrap().unwrap().pending, Some(Slot::A));
        assert_eq!(dev.boot().unwrap().slot, Slot::A);
    }
    assert_eq!(slot_bytes(&flash, &layout(), Slot::B, new.len()), new);
    assert_eq!(slot_bytes(&flash, &layout(), Slot::A, 1_234), image(1_234, 3));
    pin.done();
}

#[test]
fn unconfirmed_image_reverts_to_previous_slot() {
    let keys = trusted_keys();
    let (old, new) = (old_image(), new_image());
    let mut flash = provisioned();
    let blink: Vec<PinTransaction> = (0..REVERT_BLINKS).flat_map(|_| install_pulse()).collect();
    let mut pin = PinMock::new(&[install_pulse().to_vec(), blink].concat());
    let waits: Vec<DelayTransaction> =
        (0..2 * REVERT_BLINKS).map(|_| DelayTransaction::delay_ms(BLINK_HALF_PERIOD_MS)).collect();
    let mut delay = CheckedDelay::new(&waits);
    {
        let slots = Slots::new(&mut flash, layout(), SlotConfig::default()).unwrap();
        let mut dev = Secondary::new(slots, identity(&keys), pin.clone(), delay.clone());
        install(&mut dev, &sign_manifest(&hub_key(), &manifest_for(&new, NEW_RELEASE)), &new).unwrap();

        // Confirming before the image ever ran is refused.
        assert_eq!(dev.confirm(), Err(SlotError::NothingToConfirm));
        // A second update cannot overwrite the fallback while one is pending.
        let again = sign_manifest(&hub_key(), &manifest_for(&new, NEW_RELEASE));
        assert!(matches!(dev.begin_install(&again, NOW), Err(InstallError::Slot(SlotError::UpdateInProgress))));

        let trial = dev.boot().unwrap();
        assert_eq!((trial.slot, trial.trial), (Slot::B, true));
        // ... the new image hangs or resets before calling confirm ...
        let back = dev.boot().unwrap();
        assert_eq!((back.slot, back.trial, back.reverted), (Slot::A, false, true));
        assert_eq!(back.descriptor.image_sha256, sha256(&old));
        let state = dev.slots_mut().state().unwrap().unwrap();
        assert_eq!((state.active, state.pending), (Slot::A, None));
        assert_eq!(state.min_release_counter, OLD_RELEASE, "a reverted release must not raise the counter");

        // Reverting happens once; later boots are ordinary boots of the old slot, and confirm has nothing to do.
        let later = dev.boot().unwrap();
        assert_eq!((later.slot, later.trial, later.reverted), (Slot::A, false, false));
        assert_eq!(dev.confirm(), Err(SlotError::NothingToConfirm));
    }
    assert_eq!(slot_bytes(&flash, &layout(), Slot::A, old.len()), old);
    pin.done();
    delay.done();
}

/// Streams `image` for a manifest of `manifest_image` and returns the error plus the device's state afterwards.
fn stream_wrong_image(manifest_image: &[u8], image: &[u8]) -> (SlotError<MemFlashError>, Flash) {
    let keys = trusted_keys();
    let mut flash = provisioned();
    let mut pin = PinMock::new(&install_pulse());
    let err = {
        let slots = Slots::new(&mut flash, layout(), SlotConfig::default()).unwrap();
        let mut dev = Secondary::new(slots, identity(&keys), pin.clone(), NoopDelay::new());
        let env = sign_manifest(&hub_key(), &manifest_for(manifest_image, NEW_RELEASE));
        let mut inst = dev.begin_install(&env, NOW).unwrap();
        let mut failure = None;
        for chunk in image.chunks(CHUNK) {
            if let Err(e) = inst.write(chunk) {
                failure = Some(e);
                break;
            }
        }
        let err = match failure {
            Some(e) => {
                // The session is dead after an error; it cannot be finished into a pending image.
                assert_eq!(inst.finish(), Err(SlotError::SessionAborted));
                e
            }
            None => inst.finish().unwrap_err(),
        };
        // Nothing became pending: the device still boots the old, verified image.
        let state = dev.slots_mut().state().unwrap().unwrap();
        assert_eq!((state.active, state.pending), (Slot::A, None));
        let boot = dev.boot().unwrap();
        assert_eq!((boot.slot, boot.trial, boot.reverted), (Slot::A, false, false));
        assert_eq!(boot.descriptor.image_sha256, sha256(&old_image()));
        err
    };
    pin.done();
    (err, flash)
}

#[test]
fn image_one_byte_longer_rejected() {
    let new = new_image();
    let mut longer = new.clone();
    longer.push(0x42);
    let (err, flash) = stream_wrong_image(&new, &longer);
    assert_eq!(err, SlotError::Image(ImageError::TooLong { expected: new.len() as u32 }));
    // The excess byte was refused before it reached the flash.
    let end = layout().slots[1] as usize + new.len();
    assert_eq!(flash.mem[end], 0xFF);
}

#[test]
fn image_one_byte_shorter_rejected() {
    let new = new_image();
    let (err, _) = stream_wrong_image(&new, &new[..new.len() - 1]);
    assert_eq!(err, SlotError::Image(ImageError::TooShort { expected: new.len() as u32, got: new.len() as u32 - 1 }));
}

#[test]
fn image_with_different_byte_rejected() {
    let new = new_image();
    let mut tampered = new.clone();
    tampered[new.len() / 2] ^= 0x01;
    let (err, _) = stream_wrong_image(&new, &tampered);
    assert_eq!(err, SlotError::Image(ImageError::HashMismatch));
}

#[test]
fn image_larger_than_slot_rejected_before_erasing() {
    let keys = trusted_keys();
    let huge = image(layout().slot_size as usize + 1, 4);
    let mut flash = provisioned();
    {
        let mut dev = device(&mut flash, layout(), &keys);
        let env = sign_manifest(&hub_key(), &manifest_for(&huge, NEW_RELEASE));
        assert!(matches!(dev.begin_install(&env, NOW), Err(InstallError::Slot(SlotError::ImageTooLarge { .. }))));
    }
    assert_eq!(flash.mutations, 0);
}

#[test]
fn unprovisioned_device_refuses_to_boot_or_install() {
    let keys = trusted_keys();
    let mut flash = Flash::new(layout_for(1024, 8).1);
    let mut dev = device(&mut flash, layout(), &keys);
    assert_eq!(dev.boot(), Err(SlotError::NotProvisioned));
    let new = new_image();
    let env = sign_manifest(&hub_key(), &manifest_for(&new, NEW_RELEASE));
    assert!(matches!(dev.begin_install(&env, NOW), Err(InstallError::Slot(SlotError::NotProvisioned))));
}

#[test]
fn provisioning_refuses_an_image_that_does_not_match() {
    let mut flash = Flash::new(layout_for(1024, 8).1);
    flash.program(layout().slots[0], &old_image());
    let mut slots = Slots::new(&mut flash, layout(), SlotConfig::default()).unwrap();
    let wrong = outpost_firmware::Descriptor {
        image_len: OLD_IMAGE_LEN as u32,
        release_counter: 1,
        image_sha256: sha256(&new_image()),
    };
    assert_eq!(slots.provision(Slot::A, wrong), Err(SlotError::NoBootableImage));
    assert_eq!(slots.state(), Ok(None));
}

#[test]
fn layout_that_does_not_fit_the_flash_rejected() {
    let (good, capacity) = layout_for(1024, 8);
    let check = |l: FlashLayout| Slots::new(Flash::new(capacity), l, SlotConfig::default()).map(|_| ());
    assert_eq!(check(good), Ok(()));
    assert_eq!(check(FlashLayout { state_sectors: [0, 0], ..good }), Err(SlotError::Layout(LayoutError::Overlap)));
    assert_eq!(
        check(FlashLayout { slots: [good.slots[0], good.slots[0] + 1024], ..good }),
        Err(SlotError::Layout(LayoutError::Overlap))
    );
    assert_eq!(check(FlashLayout { slot_size: 1000, ..good }), Err(SlotError::Layout(LayoutError::Misaligned)));
    assert_eq!(
        check(FlashLayout { slots: [good.slots[0], good.slots[1] + 1024], ..good }),
        Err(SlotError::Layout(LayoutError::OutOfBounds))
    );
}

#[test]
fn torn_newest_state_record_falls_back_to_the_previous_one() {
    let keys = trusted_keys();
    let new = new_image();
    let mut flash = provisioned();
    {
        let mut dev = device(&mut flash, layout(), &keys);
        install(&mut dev, &sign_manifest(&hub_key(), &manifest_for(&new, NEW_RELEASE)), &new).unwrap();
    }
    // The pending record (seq 2) went to sector 1; flip one bit in it, as a torn write or bit rot would.
    flash.mem[1024 + 20] ^= 0x04;
    let mut dev = device(&mut flash, layout(), &keys);
    let state = dev.slots_mut().state().unwrap().unwrap();
    assert_eq!((state.seq, state.pending), (1, None));
    let boot = dev.boot().unwrap();
    assert_eq!((boot.slot, boot.trial), (Slot::A, false));
}
