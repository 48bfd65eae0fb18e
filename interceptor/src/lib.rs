//! interceptor's user space. One datapath (the kernel programs of `interceptor-ebpf`), two ways
//! of enrolling pods, two backends. The arrows run one way, from the top down:
//!
//! - [`cli`]: the command line (clap), turned into plain options; nothing below sees clap;
//! - ways of running: [`init`] (per pod: `init`, `clean`), [`node`] (the node daemon, its API
//!   and metrics) and [`cni`] (the CNI plugin, a client of the node's API);
//! - backends: [`datapath`] (eBPF programs, their maps, links and pins) and [`iptables`]
//!   (istio-iptables' own rules); neither uses the other;
//! - what they both take: [`pod`] (what we read about a pod, once) and [`config`] (istio's
//!   options, resolved and validated; pure);
//! - at the bottom: [`sys`] (system calls by family), [`check`] (what the kernel offers, probed
//!   without changing anything), [`family`], [`error`], and the kernel model shared with the
//!   programs (`interceptor_ebpf`).

pub mod check;
pub mod cli;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod error;
pub mod explain;
pub mod family;
pub mod init;
pub mod iptables;
pub mod node;
pub mod pod;
pub mod sys;
pub mod trace;
