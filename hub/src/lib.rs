//! The Outpost hub: the central registry of model packages, and later their signing, release and fleet service.
//!
//! This crate is the library behind the `outpost-hub` binary. Logic that devices share lives in `outpost-shared`;
//! here are the stores and the drivers around them.

pub mod admin;
pub mod attest;
pub mod audit;
pub mod backend;
pub mod blobs;
pub mod boundary;
pub mod challenger;
pub mod clock;
pub mod config;
pub mod console;
pub mod controller;
pub mod director;
pub mod evaluate;
pub mod metrics;
pub mod registry;
pub mod replicas;
pub mod reports;
pub mod rollouts;
pub mod routers;
pub mod service;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod tuf;

pub use registry::{Registry, RegistryError};
