//! `#![no_std]` secondary for microcontrollers behind an Outpost gateway agent: it verifies a compact hub-signed
//! image manifest without allocating, streams the image into an A/B flash slot and boots it with automatic revert.
//!
//! - [`manifest`]: the byte format (CBOR body, signed envelope, time token) with encoders usable from `std` code;
//! - [`verify`]: signature, ids, anti-rollback, expiry and streaming image checks;
//! - [`slots`]: A/B slots and power-cut-safe boot state over `embedded-storage` NOR flash;
//! - [`device`]: the whole secondary behind `embedded-hal` seams (status pin, delay);
//! - [`eat`]: compact attestation evidence (an EAT in COSE_Sign1) the hub's verifier accepts.
//!
//! No `alloc`, no `unsafe`, and no panicking constructs on any input (enforced by the clippy lints below).
//!
//! Code size: Ed25519 verification needs SHA-512, whose fully unrolled software backend dominates flash use on
//! Cortex-M. Firmware builds should pass `--cfg sha2_backend_soft="compact"` in `RUSTFLAGS` (a `sha2` build
//! option; measured on thumbv7em, opt-level "s" + LTO: verify path 22 KiB of `.text` instead of 55 KiB).
#![no_std]
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

pub mod device;
pub mod eat;
pub mod manifest;
pub mod slots;
pub mod verify;

pub use device::{Identity, Install, InstallError, Secondary};
pub use eat::{EatClaims, EatError, encode_eat};
pub use manifest::{Envelope, Expiry, Manifest, TimeToken};
pub use slots::{BootDecision, BootState, Descriptor, FlashLayout, Slot, SlotConfig, SlotError, Slots};
pub use verify::{Freshness, ImageCheck, ImageError, ManifestError, Policy, VerifiedManifest, verify_manifest};
