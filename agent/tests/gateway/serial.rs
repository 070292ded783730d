//! A simulated serial link to a secondary: frames over two in-memory byte pipes with small bounded buffers, and a
//! thread playing the microcontroller — `outpost_firmware`'s [`Secondary`] over an in-memory NOR flash.
//!
//! Test support for `tests/gateway.rs`, outside the agent's build: it implements the public
//! [`outpost_agent::gateway::Transport`] from outside, as a real serial link would.
//!
//! Frame: `type u8 | len u16 BE | payload` (at most [`MAX_PAYLOAD`] bytes). The gateway sends `TIME_TOKEN`,
//! `MANIFEST`, `CHUNK`…, `END`, `REBOOT`, `STATUS`; the secondary answers a `REPLY` to `MANIFEST`, `END` and
//! `REBOOT` and a `STATE` to `STATUS`. Chunks get no answer: a full buffer blocks the writer, as a UART's flow
//! control would. The secondary side reads frames into fixed buffers, as firmware without an allocator would.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{ErrorType as PinErrorType, OutputPin};
use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash, check_erase, check_read, check_write,
};
use outpost_firmware::manifest::MAX_ENVELOPE_LEN;
use outpost_firmware::{
    Descriptor, FlashLayout, Freshness, Identity, InstallError, ManifestError, Secondary, Slot, SlotConfig, SlotError,
    Slots,
};

use outpost_agent::gateway::{Refusal, Reply, SecondaryStatus, Transport};

/// Largest frame payload (a compact manifest is at most 256 bytes; image chunks are what the gateway chooses).
pub const MAX_PAYLOAD: usize = 512;
const HEADER_LEN: usize = 3;

const TIME_TOKEN: u8 = 0x01;
const MANIFEST: u8 = 0x02;
const CHUNK: u8 = 0x03;
const END: u8 = 0x04;
const REBOOT: u8 = 0x05;
const STATUS: u8 = 0x06;
const REPLY: u8 = 0x81;
const STATE: u8 = 0x82;
const NO_SLOT: u8 = 0xFF;

/// Why the link failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The other end hung up.
    #[error("link closed")]
    Closed,
    /// The other end did not read or answer in time.
    #[error("no progress within {0:?}")]
    Timeout(Duration),
    /// A payload larger than [`MAX_PAYLOAD`] was to be sent.
    #[error("payload of {0} bytes exceeds {MAX_PAYLOAD}")]
    TooLong(usize),
    /// The other end sent something that is not a valid frame here.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// One direction of a serial line: a bounded FIFO of bytes. A writer waits while it is full, a reader while it
/// is empty; closing wakes both.
#[derive(Debug)]
pub struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
    capacity: usize,
}

#[derive(Debug)]
struct PipeState {
    bytes: VecDeque<u8>,
    closed: bool,
}

impl Pipe {
    /// A pipe holding at most `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Arc<Pipe> {
        let capacity = capacity.max(1);
        Arc::new(Pipe {
            state: Mutex::new(PipeState { bytes: VecDeque::with_capacity(capacity), closed: false }),
            changed: Condvar::new(),
            capacity,
        })
    }

    /// Hangs up: pending and future reads and writes fail with [`LinkError::Closed`] once the bytes are gone.
    pub fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closed = true;
        }
        self.changed.notify_all();
    }

    fn lock(&self) -> Result<MutexGuard<'_, PipeState>, LinkError> {
        self.state.lock().map_err(|_| LinkError::Closed)
    }

    /// Waits (up to `timeout`, or forever) until `ready` holds or the pipe closes.
    fn wait<'a>(
        &self,
        guard: MutexGuard<'a, PipeState>,
        timeout: Option<Duration>,
        ready: impl Fn(&PipeState) -> bool,
    ) -> Result<MutexGuard<'a, PipeState>, LinkError> {
        let blocked = |s: &mut PipeState| !s.closed && !ready(s);
        match timeout {
            None => self.changed.wait_while(guard, blocked).map_err(|_| LinkError::Closed),
            Some(t) => {
                let (guard, result) =
                    self.changed.wait_timeout_while(guard, t, blocked).map_err(|_| LinkError::Closed)?;
                if result.timed_out() { Err(LinkError::Timeout(t)) } else { Ok(guard) }
            }
        }
    }

    fn write_all(&self, mut data: &[u8], timeout: Option<Duration>) -> Result<(), LinkError> {
        while !data.is_empty() {
            let mut s = self.wait(self.lock()?, timeout, |s| s.bytes.len() < self.capacity)?;
            if s.closed {
                return Err(LinkError::Closed);
            }
            let room = self.capacity.saturating_sub(s.bytes.len()).min(data.len());
            let (now, rest) = data.split_at(room);
            s.bytes.extend(now);
            data = rest;
            self.changed.notify_all();
        }
        Ok(())
    }

    fn read_exact(&self, out: &mut [u8], timeout: Option<Duration>) -> Result<(), LinkError> {
        let mut filled = 0;
        while filled < out.len() {
            let mut s = self.wait(self.lock()?, timeout, |s| !s.bytes.is_empty())?;
            if s.bytes.is_empty() {
                return Err(LinkError::Closed);
            }
            for slot in out.iter_mut().skip(filled) {
                let Some(b) = s.bytes.pop_front() else { break };
                *slot = b;
                filled += 1;
            }
            self.changed.notify_all();
        }
        Ok(())
    }
}

fn write_frame(pipe: &Pipe, kind: u8, payload: &[u8], timeout: Option<Duration>) -> Result<(), LinkError> {
    let len = u16::try_from(payload.len()).ok().filter(|l| usize::from(*l) <= MAX_PAYLOAD);
    let len = len.ok_or(LinkError::TooLong(payload.len()))?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.push(kind);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    pipe.write_all(&frame, timeout)
}

/// Reads one frame into `buf` and returns its type and payload length.
fn read_frame(pipe: &Pipe, buf: &mut [u8; MAX_PAYLOAD], timeout: Option<Duration>) -> Result<(u8, usize), LinkError> {
    let mut header = [0u8; HEADER_LEN];
    pipe.read_exact(&mut header, timeout)?;
    let [kind, hi, lo] = header;
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let payload = buf.get_mut(..len).ok_or(LinkError::Malformed("payload longer than the frame buffer"))?;
    pipe.read_exact(payload, timeout)?;
    Ok((kind, len))
}

// ------------------------------------------------------------------------------------------------ gateway end

/// The gateway's end of a simulated serial link (see [`spawn_secondary`]). Dropping it hangs up and waits for the
/// secondary's thread to end.
#[derive(Debug)]
pub struct SerialLink {
    to_secondary: Arc<Pipe>,
    from_secondary: Arc<Pipe>,
    timeout: Duration,
    secondary: Option<JoinHandle<Result<(), String>>>,
}

impl SerialLink {
    fn request(&mut self, kind: u8, payload: &[u8]) -> Result<(u8, [u8; MAX_PAYLOAD], usize), LinkError> {
        write_frame(&self.to_secondary, kind, payload, Some(self.timeout))?;
        let mut buf = [0u8; MAX_PAYLOAD];
        let (kind, len) = read_frame(&self.from_secondary, &mut buf, Some(self.timeout))?;
        Ok((kind, buf, len))
    }

    fn reply(&mut self, kind: u8, payload: &[u8]) -> Result<Reply, LinkError> {
        match self.request(kind, payload)? {
            (REPLY, buf, len) => decode_reply(buf.get(..len).unwrap_or_default()),
            _ => Err(LinkError::Malformed("expected a reply")),
        }
    }

    /// Hangs up and returns how the secondary's thread ended (`Err` if its setup or link failed).
    pub fn close(mut self) -> Result<(), String> {
        self.hang_up()
    }

    fn hang_up(&mut self) -> Result<(), String> {
        self.to_secondary.close();
        self.from_secondary.close();
        match self.secondary.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err("the secondary thread panicked".into()),
            None => Ok(()),
        }
    }
}

impl Drop for SerialLink {
    fn drop(&mut self) {
        let _ = self.hang_up();
    }
}

impl Transport for SerialLink {
    type Error = LinkError;

    fn send_manifest(&mut self, manifest: &[u8], time_token: &[u8]) -> Result<Reply, LinkError> {
        write_frame(&self.to_secondary, TIME_TOKEN, time_token, Some(self.timeout))?;
        self.reply(MANIFEST, manifest)
    }

    fn send_chunk(&mut self, chunk: &[u8]) -> Result<(), LinkError> {
        write_frame(&self.to_secondary, CHUNK, chunk, Some(self.timeout))
    }

    fn end_image(&mut self) -> Result<Reply, LinkError> {
        self.reply(END, &[])
    }

    fn reboot(&mut self) -> Result<Reply, LinkError> {
        self.reply(REBOOT, &[])
    }

    fn status(&mut self) -> Result<SecondaryStatus, LinkError> {
        match self.request(STATUS, &[])? {
            (STATE, buf, len) => decode_status(buf.get(..len).unwrap_or_default()),
            _ => Err(LinkError::Malformed("expected a state frame")),
        }
    }
}

// ------------------------------------------------------------------------------------------- message bodies

const REFUSALS: [Refusal; 9] = [
    Refusal::BadSignature,
    Refusal::WrongHardware,
    Refusal::WrongDevice,
    Refusal::Rollback,
    Refusal::Stale,
    Refusal::ImageMismatch,
    Refusal::TooLarge,
    Refusal::Busy,
    Refusal::Failed,
];

fn slot_byte(slot: Option<Slot>) -> u8 {
    match slot {
        Some(Slot::A) => 0,
        Some(Slot::B) => 1,
        None => NO_SLOT,
    }
}

fn slot_of(b: u8) -> Result<Option<Slot>, LinkError> {
    match b {
        0 => Ok(Some(Slot::A)),
        1 => Ok(Some(Slot::B)),
        NO_SLOT => Ok(None),
        _ => Err(LinkError::Malformed("unknown slot")),
    }
}

fn encode_reply(r: Reply) -> [u8; 4] {
    match r {
        Reply::Accepted => [0, 0, 0, 0],
        Reply::Installed => [1, 0, 0, 0],
        Reply::Booted { slot, trial, reverted } => [2, slot_byte(Some(slot)), u8::from(trial), u8::from(reverted)],
        Reply::Refused(why) => [3, REFUSALS.iter().position(|r| *r == why).map_or(u8::MAX, |i| i as u8), 0, 0],
    }
}

fn decode_reply(b: &[u8]) -> Result<Reply, LinkError> {
    match *b {
        [0, 0, 0, 0] => Ok(Reply::Accepted),
        [1, 0, 0, 0] => Ok(Reply::Installed),
        [2, slot, trial @ 0..=1, reverted @ 0..=1] => Ok(Reply::Booted {
            slot: slot_of(slot)?.ok_or(LinkError::Malformed("boot without a slot"))?,
            trial: trial == 1,
            reverted: reverted == 1,
        }),
        [3, code, 0, 0] => {
            REFUSALS.get(usize::from(code)).map(|r| Reply::Refused(*r)).ok_or(LinkError::Malformed("unknown refusal"))
        }
        _ => Err(LinkError::Malformed("bad reply")),
    }
}

fn encode_status(s: &SecondaryStatus) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[0] = slot_byte(Some(s.active));
    out[1] = slot_byte(s.pending);
    out[2..10].copy_from_slice(&s.active_release.to_be_bytes());
    out[10..18].copy_from_slice(&s.min_release_counter.to_be_bytes());
    out
}

fn decode_status(b: &[u8]) -> Result<SecondaryStatus, LinkError> {
    let b: &[u8; 18] = b.try_into().map_err(|_| LinkError::Malformed("bad state length"))?;
    let u64_at = |i: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[i..i + 8]);
        u64::from_be_bytes(v)
    };
    Ok(SecondaryStatus {
        active: slot_of(b[0])?.ok_or(LinkError::Malformed("no active slot"))?,
        pending: slot_of(b[1])?,
        active_release: u64_at(2),
        min_release_counter: u64_at(10),
    })
}

fn install_refusal<E>(e: &InstallError<E>) -> Refusal {
    match e {
        InstallError::Manifest(m) => match m {
            ManifestError::Signature(_) => Refusal::BadSignature,
            ManifestError::WrongHardwareId => Refusal::WrongHardware,
            ManifestError::WrongDeviceId => Refusal::WrongDevice,
            ManifestError::Rollback { .. } => Refusal::Rollback,
            ManifestError::FreshnessKindMismatch
            | ManifestError::TimeToken(_)
            | ManifestError::TimeTokenWrongDevice
            | ManifestError::ClockWentBackwards { .. }
            | ManifestError::Expired { .. } => Refusal::Stale,
        },
        InstallError::Slot(s) => slot_refusal(s),
    }
}

fn slot_refusal<E>(e: &SlotError<E>) -> Refusal {
    match e {
        SlotError::Image(_) | SlotError::ReadBackMismatch => Refusal::ImageMismatch,
        SlotError::ImageTooLarge { .. } => Refusal::TooLarge,
        SlotError::UpdateInProgress => Refusal::Busy,
        SlotError::Rollback { .. } => Refusal::Rollback,
        _ => Refusal::Failed,
    }
}

// --------------------------------------------------------------------------------------------- secondary end

/// What the simulated microcontroller is, trusts and runs at power-on.
#[derive(Debug, Clone)]
pub struct SecondaryConfig {
    /// Ed25519 keys "provisioned at build time" (the hub's director key).
    pub trusted_keys: Vec<[u8; 32]>,
    /// Its hardware id.
    pub hardware_id: Vec<u8>,
    /// Its device id.
    pub device_id: Vec<u8>,
    /// The image factory-programmed into slot A.
    pub initial_image: Vec<u8>,
    /// Its release counter (the initial anti-rollback counter).
    pub initial_release: u64,
    /// Bytes per slot (rounded up to the 1 KiB erase sector).
    pub slot_size: u32,
    /// Whether a trial-booted image passes its self-test and confirms itself; otherwise the next boot reverts.
    pub self_test_passes: bool,
    /// Bytes each direction of the link buffers (small, so flow control is exercised).
    pub link_buffer: usize,
    /// How long the gateway waits for the secondary to read or answer.
    pub timeout: Duration,
}

impl SecondaryConfig {
    /// A healthy secondary running `initial_image` at `initial_release`, with 64 KiB slots and a 64-byte buffer.
    pub fn new(trusted_keys: Vec<[u8; 32]>, hardware_id: &str, device_id: &str, initial_image: Vec<u8>) -> Self {
        SecondaryConfig {
            trusted_keys,
            hardware_id: hardware_id.as_bytes().to_vec(),
            device_id: device_id.as_bytes().to_vec(),
            initial_image,
            initial_release: 1,
            slot_size: 64 * 1024,
            self_test_passes: true,
            link_buffer: 64,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Starts the simulated secondary on its own thread (provisioned with `config.initial_image`, booted once) and
/// returns the gateway's end of the link.
pub fn spawn_secondary(config: SecondaryConfig) -> SerialLink {
    let to_secondary = Pipe::new(config.link_buffer);
    let from_secondary = Pipe::new(config.link_buffer);
    let timeout = config.timeout;
    let (rx, tx) = (to_secondary.clone(), from_secondary.clone());
    let secondary = std::thread::spawn(move || {
        let result = run_secondary(&config, &rx, &tx);
        rx.close();
        tx.close();
        result
    });
    SerialLink { to_secondary, from_secondary, timeout, secondary: Some(secondary) }
}

fn run_secondary(config: &SecondaryConfig, rx: &Pipe, tx: &Pipe) -> Result<(), String> {
    let erase = RamFlash::ERASE_SIZE as u32;
    let slot_size = config.slot_size.div_ceil(erase) * erase;
    let layout = FlashLayout { state_sectors: [0, erase], slots: [2 * erase, 2 * erase + slot_size], slot_size };
    let mut flash = RamFlash::new(2 * erase as usize + 2 * slot_size as usize);
    flash.program(layout.slots[0], &config.initial_image)?;
    let mut slots = Slots::new(flash, layout, SlotConfig::default()).map_err(|e| e.to_string())?;
    let len = u32::try_from(config.initial_image.len()).map_err(|e| e.to_string())?;
    let sha = outpost_shared::Digest::of(&config.initial_image).0;
    let descriptor = Descriptor { image_len: len, release_counter: config.initial_release, image_sha256: sha };
    slots.provision(Slot::A, descriptor).map_err(|e| e.to_string())?;
    let identity =
        Identity { trusted_keys: &config.trusted_keys, hardware_id: &config.hardware_id, device_id: &config.device_id };
    let mut device = Secondary::new(slots, identity, NullPin, NoDelay);
    device.boot().map_err(|e| e.to_string())?;
    match serve(&mut device, rx, tx, config.self_test_passes) {
        Ok(()) | Err(LinkError::Closed) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The secondary's main loop: one frame at a time into fixed buffers, until the gateway hangs up.
fn serve<F: NorFlash, P: OutputPin, D: DelayNs>(
    device: &mut Secondary<'_, F, P, D>,
    rx: &Pipe,
    tx: &Pipe,
    self_test_passes: bool,
) -> Result<(), LinkError> {
    let mut frame = [0u8; MAX_PAYLOAD];
    let mut token = [0u8; MAX_ENVELOPE_LEN];
    let mut token_len = 0;
    let reply = |r: Reply| write_frame(tx, REPLY, &encode_reply(r), None);
    loop {
        let (kind, len) = read_frame(rx, &mut frame, None)?;
        let payload = frame.get(..len).unwrap_or_default();
        match kind {
            TIME_TOKEN => match token.get_mut(..len) {
                Some(dst) => {
                    dst.copy_from_slice(payload);
                    token_len = len;
                }
                None => token_len = 0,
            },
            MANIFEST => {
                let now = Freshness::TimeToken(token.get(..token_len).unwrap_or_default());
                let mut install = match device.begin_install(payload, now) {
                    Ok(install) => install,
                    Err(e) => {
                        reply(Reply::Refused(install_refusal(&e)))?;
                        continue;
                    }
                };
                reply(Reply::Accepted)?;
                let mut failed = None;
                loop {
                    let (kind, len) = read_frame(rx, &mut frame, None)?;
                    match kind {
                        CHUNK if failed.is_none() => {
                            if let Err(e) = install.write(frame.get(..len).unwrap_or_default()) {
                                failed = Some(slot_refusal(&e));
                            }
                        }
                        // Keep draining the image after a failure, so the gateway reaches END and hears why.
                        CHUNK => {}
                        END => break,
                        _ => {
                            failed = Some(Refusal::Failed);
                            break;
                        }
                    }
                }
                let result = match failed {
                    Some(why) => Reply::Refused(why),
                    None => match install.finish() {
                        Ok(()) => Reply::Installed,
                        Err(e) => Reply::Refused(slot_refusal(&e)),
                    },
                };
                reply(result)?;
            }
            REBOOT => {
                let result = match device.boot() {
                    Ok(d) => {
                        // The new image's self-test decides; an image that never confirms is reverted next boot.
                        if d.trial && self_test_passes {
                            let _ = device.confirm();
                        }
                        Reply::Booted { slot: d.slot, trial: d.trial, reverted: d.reverted }
                    }
                    Err(_) => Reply::Refused(Refusal::Failed),
                };
                reply(result)?;
            }
            STATUS => {
                let state = device.slots_mut().state().ok().flatten();
                let Some(s) = state else { return Err(LinkError::Malformed("no boot state")) };
                let status = SecondaryStatus {
                    active: s.active,
                    active_release: s.descriptor(s.active).release_counter,
                    pending: s.pending,
                    min_release_counter: s.min_release_counter,
                };
                write_frame(tx, STATE, &encode_status(&status), None)?;
            }
            // A stray chunk after a refused manifest is dropped; END without an install is refused.
            CHUNK => {}
            _ => reply(Reply::Refused(Refusal::Failed))?,
        }
    }
}

/// NOR flash in memory: 4-byte writes, 1 KiB erase sectors, programming only erased bytes (as NOR does).
#[derive(Debug)]
pub struct RamFlash {
    mem: Vec<u8>,
}

/// Why the in-memory flash refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamFlashError {
    /// Misaligned or out of bounds.
    Geometry(NorFlashErrorKind),
    /// Programming bytes that are not erased.
    NotErased,
}

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            RamFlashError::Geometry(k) => *k,
            RamFlashError::NotErased => NorFlashErrorKind::Other,
        }
    }
}

impl RamFlash {
    /// `capacity` erased bytes.
    pub fn new(capacity: usize) -> RamFlash {
        RamFlash { mem: vec![0xFF; capacity] }
    }

    /// Writes bytes as a factory programmer would.
    fn program(&mut self, offset: u32, bytes: &[u8]) -> Result<(), String> {
        let at = offset as usize;
        let dst = self.mem.get_mut(at..at + bytes.len()).ok_or("initial image does not fit the flash")?;
        dst.copy_from_slice(bytes);
        Ok(())
    }

    fn range(&mut self, offset: u32, len: usize) -> &mut [u8] {
        let at = offset as usize;
        &mut self.mem[at..at + len]
    }
}

impl ErrorType for RamFlash {
    type Error = RamFlashError;
}

impl ReadNorFlash for RamFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), RamFlashError> {
        check_read(self, offset, bytes.len()).map_err(RamFlashError::Geometry)?;
        bytes.copy_from_slice(self.range(offset, bytes.len()));
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 1024;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), RamFlashError> {
        check_erase(self, from, to).map_err(RamFlashError::Geometry)?;
        self.range(from, (to - from) as usize).fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RamFlashError> {
        check_write(self, offset, bytes.len()).map_err(RamFlashError::Geometry)?;
        let dst = self.range(offset, bytes.len());
        if dst.iter().any(|b| *b != 0xFF) {
            return Err(RamFlashError::NotErased);
        }
        dst.copy_from_slice(bytes);
        Ok(())
    }
}

/// A status pin wired to nothing.
#[derive(Debug)]
struct NullPin;

impl PinErrorType for NullPin {
    type Error = Infallible;
}

impl OutputPin for NullPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// A delay that does not wait (the simulation has no real time to spend).
#[derive(Debug)]
struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secondary_that_stops_reading_makes_the_gateway_time_out_instead_of_hanging() {
        let pipe = Pipe::new(4);
        let t = Duration::from_millis(20);
        assert_eq!(pipe.write_all(&[0; 10], Some(t)), Err(LinkError::Timeout(t)));
        let mut out = [0u8; 5];
        pipe.read_exact(&mut out[..4], Some(t)).unwrap();
        assert_eq!(pipe.read_exact(&mut out, Some(t)), Err(LinkError::Timeout(t)));
        pipe.close();
        assert_eq!(pipe.read_exact(&mut out, None), Err(LinkError::Closed));
    }

    #[test]
    fn every_reply_survives_the_wire_and_unknown_codes_are_refused() {
        let mut replies = vec![Reply::Accepted, Reply::Installed];
        replies.extend(REFUSALS.map(Reply::Refused));
        for (trial, reverted) in [(false, false), (true, false), (false, true)] {
            replies.push(Reply::Booted { slot: Slot::B, trial, reverted });
        }
        for r in replies {
            assert_eq!(decode_reply(&encode_reply(r)), Ok(r));
        }
        assert!(decode_reply(&[3, REFUSALS.len() as u8, 0, 0]).is_err());
        assert!(decode_reply(&[2, 7, 0, 0]).is_err());
        let status =
            SecondaryStatus { active: Slot::A, active_release: 9, pending: Some(Slot::B), min_release_counter: 8 };
        assert_eq!(decode_status(&encode_status(&status)), Ok(status));
    }

    #[test]
    fn an_oversized_payload_is_refused_before_anything_is_written() {
        let pipe = Pipe::new(1024);
        let e = write_frame(&pipe, CHUNK, &[0; MAX_PAYLOAD + 1], None).unwrap_err();
        assert_eq!(e, LinkError::TooLong(MAX_PAYLOAD + 1));
        assert!(pipe.lock().unwrap().bytes.is_empty());
    }
}
