//! Raw sockets on the real kernel. istio-iptables' nat `OUTPUT` rules see every packet a pod
//! sends, raw ones included: a hand-made TCP SYN to a redirected destination reaches the
//! sidecar. The eBPF backend decides at `connect()`, which a raw socket never calls, so it
//! refuses (EPERM) raw sockets that could carry TCP or UDP, and header inclusion, to every
//! process of the pod but the proxy, keeps ping working, counts each refusal, and lets a pod
//! that needs raw sockets have them (`--raw-sockets allow`, whose packets then leave directly).
//!
//! The SYN goes to a port nothing listens on in the server's namespace: the server's kernel
//! answers it with a reset, while the sidecar's listener (where nat's REDIRECT takes it)
//! answers with a SYN-ACK. So the answer says where the packet went.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use interceptor_tests::outcome::assert_exit;
use interceptor_tests::{
    Backend, Identity, Intercepted, IptablesMode, Place, Process, Route, Topology, bin_path,
    route_of,
};
use serde_json::Value;

const RAW_BIN: &str = "interceptor-raw";
/// Nothing listens there in the server's namespace.
const CLOSED_PORT: u16 = 9999;

/// A pod intercepted by `backend` with `-i '*'` and `flags`, the sidecar on 15001 and a server
/// on 8080.
struct RawPod {
    _server: Process,
    _sidecar: Process,
    p: Intercepted,
}

impl RawPod {
    fn new(tag: &str, backend: Backend, flags: &[&str]) -> Result<Self> {
        let mut all = vec!["-i", "*", "-u", "1337", "--dual-stack"];
        all.extend_from_slice(flags);
        let p = Intercepted::with_backend(tag, backend, &all)?;
        let t = &p.topo;
        Ok(Self {
            _server: t.spawn_server(
                &Place::Server,
                Identity::APP,
                &[SocketAddr::from(([0, 0, 0, 0], 8080))],
                &[],
            )?,
            _sidecar: t.spawn_sidecar(&[15001], &["--announce"])?,
            p,
        })
    }

    fn topo(&self) -> &Topology {
        &self.p.topo
    }

    /// `interceptor-raw ARGS` in the pod as root (who holds CAP_NET_RAW and is not the proxy),
    /// or through `wrapper` (e.g. `setpriv` keeping the capability for the proxy's uid).
    fn raw(&self, wrapper: &[&str], args: &[&str]) -> Result<Value> {
        let bin = bin_path(RAW_BIN)?;
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = self.topo().command(&Place::Pod, Identity::ROOT, program)?;
                c.args(rest).arg(&bin);
                c
            }
            None => self.topo().command(&Place::Pod, Identity::ROOT, &bin)?,
        };
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let done = self.topo().spawn(&mut cmd)?.wait(Duration::from_secs(10))?;
        ensure!(done.status.success(), "{args:?}: {}", done.stderr);
        serde_json::from_str(done.stdout.trim()).with_context(|| done.stdout.clone())
    }

    /// A SYN to the server's closed port, from a raw TCP socket (or, `header_included`, an
    /// ICMP raw socket writing its own IPv4 header).
    fn syn(&self, ip: IpAddr, header_included: bool) -> Result<Value> {
        let target = SocketAddr::new(ip, CLOSED_PORT).to_string();
        let mut args = vec!["syn", target.as_str()];
        if header_included {
            args.push("--header-included");
        }
        self.raw(&[], &args)
    }

    fn refused(&self) -> Result<u64> {
        self.p.counters()?["raw_socket_refused"]
            .as_u64()
            .context("raw_socket_refused in status")
    }
}

#[test]
fn raw_sockets_that_could_bypass_the_sidecar_are_refused_and_ping_still_works() -> Result<()> {
    let pod = RawPod::new("raw-refuse", Backend::Ebpf, &[])?;
    let t = pod.topo();
    let (v4, v6) = (IpAddr::V4(t.server_ip), IpAddr::V6(t.server_ip6));
    // Ordinary connections are intercepted as ever.
    let r = pod
        .p
        .probe(Identity::APP, SocketAddr::new(v4, 8080))
        .context("probe")?;
    assert_eq!(route_of(&r), Route::Sidecar(SocketAddr::new(v4, 8080)));

    // A raw TCP socket, of either family: refused before a packet can be written.
    for ip in [v4, v6] {
        let r = pod.syn(ip, false)?;
        assert_eq!(r["socket"], "EPERM", "{ip}: {r}");
    }
    // An ICMP raw socket is allowed, but not writing its own IP header (it could be TCP).
    let r = pod.syn(v4, true)?;
    assert_eq!(
        (&r["socket"], &r["header_included"]),
        (&"ok".into(), &"EPERM".into()),
        "{r}"
    );
    // ping works over both families.
    for ip in [v4, v6] {
        let r = pod.raw(&[], &["ping", &ip.to_string()])?;
        assert_eq!(r["answer"], "echo-reply", "ping {ip}: {r}");
    }
    assert_eq!(pod.refused()?, 3, "each refusal counted");

    // The proxy (uid 1337, given CAP_NET_RAW) is not refused: its packets go direct anyway,
    // as istio-iptables' owner rule lets them. The server's kernel resets the SYN.
    let proxy = [
        "setpriv",
        "--reuid=1337",
        "--regid=1337",
        "--clear-groups",
        "--inh-caps=+net_raw",
        "--ambient-caps=+net_raw",
    ];
    let target = SocketAddr::new(v4, CLOSED_PORT).to_string();
    let r = pod.raw(&proxy, &["syn", &target])?;
    assert_eq!(
        (&r["socket"], &r["answer"]),
        (&"ok".into(), &"rst".into()),
        "{r}"
    );
    assert_eq!(pod.refused()?, 3);
    Ok(())
}

#[test]
fn a_pod_that_needs_raw_sockets_gets_them_and_istio_iptables_would_redirect_the_syn() -> Result<()>
{
    // Allowed: the hand-made SYN leaves the pod directly (the server's kernel resets it)...
    let allowed = RawPod::new("raw-allow", Backend::Ebpf, &["--raw-sockets", "allow"])?;
    let v4 = IpAddr::V4(allowed.topo().server_ip);
    for header_included in [false, true] {
        let r = allowed.syn(v4, header_included)?;
        assert_eq!(
            (&r["socket"], &r["sent"], &r["answer"]),
            (&"ok".into(), &"ok".into(), &"rst".into()),
            "header included: {header_included}: {r}"
        );
    }
    assert_eq!(allowed.refused()?, 0);
    let options = &allowed.p.status()?["options"];
    assert_eq!(options["raw_sockets"], "allow", "{options}");
    drop(allowed);

    // ...which is what refusing prevents: under istio-iptables' rules the same packet is
    // redirected to the sidecar, whose listener answers it.
    let iptables = RawPod::new("raw-ipt", Backend::Iptables(IptablesMode::Nft), &[])?;
    let r = iptables.syn(IpAddr::V4(iptables.topo().server_ip), false)?;
    assert_eq!(
        (&r["socket"], &r["answer"]),
        (&"ok".into(), &"syn-ack".into()),
        "{r}"
    );
    // Refusing is the eBPF backend's; the iptables backend says so rather than ignore it.
    let out = iptables.p.try_init(&["-i", "*", "--raw-sockets", "refuse"]);
    assert_exit(
        &out,
        2,
        "--raw-sockets: refuse is the eBPF backend's",
        &"iptables",
    );
    Ok(())
}
