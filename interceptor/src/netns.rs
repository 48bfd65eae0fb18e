//! The pod's network namespace: its cookie (the key of the pod's configuration) and its own
//! addresses (which connections stay on lo) and interfaces (`-c`), read from inside it on a
//! short-lived thread.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};

use crate::{error::TargetError, sys};

const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// A network namespace, held open.
#[derive(Debug)]
pub struct Netns {
    pub path: PathBuf,
    /// nsfs inode number: names the namespace in `ip netns identify`-style listings.
    pub inode: u64,
    pub file: File,
}

/// What the programs need to know about a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsInfo {
    /// `bpf_get_netns_cookie()` of sockets in the namespace.
    pub cookie: u64,
    /// The namespace's own IPv4 addresses, loopback excluded.
    pub addrs4: Vec<Ipv4Addr>,
    /// Its interfaces: (name, index), for `-c`.
    pub interfaces: Vec<(String, u32)>,
    /// The namespace's own IPv6 addresses (link-local ones too), `::1` excluded.
    pub addrs6: Vec<Ipv6Addr>,
    /// Its routes (main table), for `-c` on outbound connections.
    pub routes: Vec<crate::routes::Route>,
}

impl NetnsInfo {
    /// Whether IPv6 is captured in this namespace, as istio-iptables decides it (its
    /// `EnableIPv6`; see `iptables::facts::ipv6_enabled`). The kernel lists every IPv4 address
    /// before any IPv6 one (`sys::interface_addrs`), so these lists give the order istio-iptables
    /// sees. A namespace
    /// without a usable address (istio-iptables refuses it) captures IPv4 only.
    pub fn ipv6_enabled(&self, dual_stack: bool) -> bool {
        let addrs: Vec<IpAddr> = (self.addrs4.iter().map(|a| IpAddr::V4(*a)))
            .chain(self.addrs6.iter().map(|a| IpAddr::V6(*a)))
            .collect();
        crate::iptables::facts::ipv6_enabled(&addrs, dual_stack).unwrap_or(false)
    }
}

impl Netns {
    pub fn open(path: &Path) -> Result<Self, TargetError> {
        let err = |reason: String| TargetError::Netns {
            path: path.display().to_string(),
            reason,
        };
        let file = File::open(path).map_err(|e| err(e.to_string()))?;
        // SAFETY: ioctl on an fd we own; NS_GET_NSTYPE takes no argument.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        if nstype != libc::CLONE_NEWNET {
            return Err(err("not a network namespace file".into()));
        }
        let inode = file.metadata().map_err(|e| err(e.to_string()))?.ino();
        Ok(Netns {
            path: path.to_path_buf(),
            inode,
            file,
        })
    }

    /// Runs `f` on a short-lived thread inside the namespace (setns affects that thread only),
    /// or right here when the caller is already in it.
    pub fn run_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        // Already there (the default --netns): no setns, which would need CAP_SYS_ADMIN.
        let here = std::fs::metadata("/proc/thread-self/ns/net").ok();
        let target = self.file.metadata().ok();
        if let (Some(h), Some(t)) = (here, target)
            && (h.dev(), h.ino()) == (t.dev(), t.ino())
        {
            return f();
        }
        let fd = self.file.try_clone().context("duplicating the netns fd")?;
        let path = self.path.clone();
        // Already there (an init container in its own pod): setns would need CAP_SYS_ADMIN
        // for nothing.
        let own = std::fs::metadata("/proc/thread-self/ns/net").is_ok_and(|m| {
            m.ino() == self.inode && m.dev() == fd.metadata().map_or(0, |f| f.dev())
        });
        std::thread::spawn(move || -> anyhow::Result<T> {
            if !own {
                sys::setns_net(&fd).with_context(|| format!("entering {}", path.display()))?;
            }
            f()
        })
        .join()
        .map_err(|_| anyhow!("the namespace thread panicked"))?
    }

    /// Every address of the namespace, both families, in the kernel's order (see
    /// [`sys::interface_addrs`]).
    pub fn addresses(&self) -> anyhow::Result<Vec<IpAddr>> {
        self.run_inside(|| sys::interface_addrs().context("listing the namespace's addresses"))
    }

    /// Reads the cookie and addresses from inside the namespace.
    pub fn inspect(&self) -> anyhow::Result<NetnsInfo> {
        self.run_inside(|| {
            Ok(NetnsInfo {
                cookie: sys::current_netns_cookie()
                    .context("reading the namespace cookie (SO_NETNS_COOKIE needs Linux 5.14)")?,
                addrs4: sys::interface_addrs4().context("listing the namespace's addresses")?,
                interfaces: sys::interfaces().context("listing the namespace's interfaces")?,
                addrs6: sys::interface_addrs6()
                    .context("listing the namespace's IPv6 addresses")?,
                routes: crate::routes::read_current().context("reading the namespace's routes")?,
            })
        })
    }
}
