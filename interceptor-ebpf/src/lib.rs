//! The data model shared by the kernel programs and user space: map keys and values
//! (`#[repr(C)]`, no implicit padding), the counter layout, the byte-order conversions of the
//! kernel's context fields, and the outbound and inbound decision tables themselves.
//!
//! This crate is `no_std` and builds both for `bpfel-unknown-none` (the programs) and for the
//! host (the loader and the unit tests), so the two sides cannot disagree on a layout or a rule.
#![no_std]

pub mod accel;
pub mod counters;
pub mod decision;
pub mod family;
pub mod inbound;
pub mod model;
pub mod raw_socket;
#[cfg(test)]
mod testing;
pub mod trace;
pub mod wire;

pub use counters::Counter;
pub use model::*;
