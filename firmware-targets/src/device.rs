//! The secondary as a whole: verification and slots wired to the hardware seams (`embedded-hal` status pin and
//! delay), so firmware calls `begin_install` / `boot` / `confirm` and tests drive the same code with mocks.
//!
//! The status pin is high while an image is being written and pulses [`REVERT_BLINKS`] times after a revert. It is
//! advisory: a failing LED must never abort an update or a boot, so its errors are deliberately ignored.

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use embedded_storage::nor_flash::{ErrorType, NorFlash};

use crate::manifest::PUBLIC_KEY_LEN;
use crate::slots::{BootDecision, Slot, SlotError, Slots, UpdateSession};
use crate::verify::{Freshness, ManifestError, Policy, verify_manifest};

/// Pulses of the status pin after the device reverted to the previous image.
pub const REVERT_BLINKS: u8 = 3;
/// Half period of a revert pulse, in milliseconds.
pub const BLINK_HALF_PERIOD_MS: u32 = 100;

/// What the device is and whom it trusts; fixed at build time.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'k> {
    /// Ed25519 public keys provisioned at build time.
    pub trusted_keys: &'k [[u8; PUBLIC_KEY_LEN]],
    /// This device's hardware id.
    pub hardware_id: &'k [u8],
    /// This device's id.
    pub device_id: &'k [u8],
}

/// Why an install could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InstallError<E> {
    /// The manifest was rejected; nothing was written.
    #[error("manifest rejected: {0}")]
    Manifest(ManifestError),
    /// The slots refused or failed.
    #[error("slots: {0}")]
    Slot(SlotError<E>),
}

/// The secondary device: flash slots, identity, status pin and delay.
#[derive(Debug)]
pub struct Secondary<'k, F, P, D> {
    slots: Slots<F>,
    identity: Identity<'k>,
    status: P,
    delay: D,
}

impl<'k, F: NorFlash, P: OutputPin, D: DelayNs> Secondary<'k, F, P, D> {
    /// Assembles a secondary.
    pub fn new(slots: Slots<F>, identity: Identity<'k>, status: P, delay: D) -> Self {
        Self { slots, identity, status, delay }
    }

    /// Verifies `envelope` against the identity and the stored counters and floors, then opens the inactive slot
    /// for the image. Nothing touches the flash or the pin unless the manifest passes every check.
    ///
    /// # Errors
    /// [`InstallError::Manifest`] for a rejected manifest, [`InstallError::Slot`] otherwise.
    pub fn begin_install(
        &mut self,
        envelope: &[u8],
        now: Freshness<'_>,
    ) -> Result<Install<'_, F, P>, InstallError<F::Error>> {
        let state =
            self.slots.state().map_err(InstallError::Slot)?.ok_or(InstallError::Slot(SlotError::NotProvisioned))?;
        let policy = Policy {
            trusted_keys: self.identity.trusted_keys,
            hardware_id: self.identity.hardware_id,
            device_id: self.identity.device_id,
            min_release_counter: state.min_release_counter,
            latest_known_time: state.latest_known_time,
            latest_known_counter: state.latest_known_counter,
        };
        let verified = verify_manifest(envelope, &policy, now).map_err(InstallError::Manifest)?;
        let session = self.slots.begin_update(&verified).map_err(InstallError::Slot)?;
        let _ = self.status.set_high();
        Ok(Install { session, status: &mut self.status })
    }

    /// Picks and records the slot to boot (see [`Slots::boot`]); pulses the status pin after a revert.
    ///
    /// # Errors
    /// See [`Slots::boot`].
    pub fn boot(&mut self) -> Result<BootDecision, SlotError<F::Error>> {
        let decision = self.slots.boot()?;
        if decision.reverted {
            for _ in 0..REVERT_BLINKS {
                let _ = self.status.set_high();
                self.delay.delay_ms(BLINK_HALF_PERIOD_MS);
                let _ = self.status.set_low();
                self.delay.delay_ms(BLINK_HALF_PERIOD_MS);
            }
        }
        Ok(decision)
    }

    /// Confirms the running trial image (see [`Slots::mark_booted`]).
    ///
    /// # Errors
    /// See [`Slots::mark_booted`].
    pub fn confirm(&mut self) -> Result<Slot, SlotError<F::Error>> {
        self.slots.mark_booted()
    }

    /// The slot manager.
    pub fn slots_mut(&mut self) -> &mut Slots<F> {
        &mut self.slots
    }

    /// Takes the parts back.
    pub fn into_parts(self) -> (Slots<F>, P, D) {
        (self.slots, self.status, self.delay)
    }
}

/// An install in progress; the status pin goes low when it is dropped, whether it finished or failed.
pub struct Install<'s, F: NorFlash, P: OutputPin> {
    session: UpdateSession<'s, F>,
    status: &'s mut P,
}

impl<F: NorFlash, P: OutputPin> Install<'_, F, P> {
    /// Streams the next image chunk into the inactive slot.
    ///
    /// # Errors
    /// See [`UpdateSession::write`].
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SlotError<<F as ErrorType>::Error>> {
        self.session.write(chunk)
    }

    /// Verifies the written image and marks it pending; the next [`Secondary::boot`] trial-boots it.
    ///
    /// # Errors
    /// See [`UpdateSession::finish`].
    pub fn finish(mut self) -> Result<(), SlotError<<F as ErrorType>::Error>> {
        self.session.finish()
    }
}

impl<F: NorFlash, P: OutputPin> Drop for Install<'_, F, P> {
    fn drop(&mut self) {
        let _ = self.status.set_low();
    }
}
