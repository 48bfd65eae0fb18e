//! The eBPF backend: the kernel programs this build carries, loaded and attached to a pod's
//! cgroup (and its network namespace, for `sk_lookup`), with the pod's options written into
//! their maps. Everything is pinned on bpffs, so interception outlives the process that set it
//! up (an init container, a daemon that restarts).
//!
//! - [`object`]: the object and its loading (maps pinned where they live, programs verified);
//! - [`links`]: attaching, pinning and swapping programs behind their links;
//! - [`plan`]: a pod's options as map entries, pure; [`maps`]: writing them;
//! - [`instance`]: a per-pod instance (`init`, `clean`), all or nothing;
//! - [`listeners`]: registering the proxy's inbound listener opened before us;
//! - [`record`]: what an instance says about itself; [`status`]: reading it all back;
//!   [`bpffs`]: where it lives.

pub mod bpffs;
pub mod instance;
pub mod links;
pub mod listeners;
pub mod maps;
pub mod object;
pub mod plan;
pub mod record;
pub mod status;

pub use instance::Applied;
pub use object::LoadOptions;
pub use plan::MapPlan;
pub use record::{InstanceMode, InstanceRecord};
