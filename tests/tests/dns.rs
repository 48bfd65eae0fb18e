//! DNS capture (`--redirect-dns`) on the real kernel: a real DNS server (dnsmasq) in the server
//! namespace, the DNS proxy stand-in on 127.0.0.1:15053 in the pod, and real clients in the
//! pod (our query tool over each transport, `dig`, glibc's getaddrinfo).
//!
//! The proxy answers `*.mesh.test` itself with 10.200.9.9; the DNS server answers it with
//! 10.200.8.8, so every answer says which way the query went.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Result;
use interceptor_tests::{DnsTransport, Identity, Intercepted, TempFile, Topology};

const VIA_PROXY: Ipv4Addr = Ipv4Addr::new(10, 200, 9, 9);
const VIA_SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 8, 8);
const UPSTREAM_ONLY: Ipv4Addr = Ipv4Addr::new(10, 200, 3, 7);

/// A pod whose resolv.conf names the server's first address, with dnsmasq on the server's
/// first two addresses and the DNS proxy in the pod, intercepted with `flags`.
struct DnsPod {
    pod: Intercepted,
    resolv_conf: TempFile,
    _dns_server: interceptor_tests::Process,
    dns_proxy: interceptor_tests::Process,
}

impl DnsPod {
    fn new(tag: &str, flags: &[&str]) -> Result<Self> {
        let topo = Topology::new(tag)?;
        let name_server = topo.server_ip;
        let other_server = topo.server_extra_ips[0];
        let resolv_conf = TempFile::new(
            &format!("{}-resolv.conf", topo.name),
            &format!("search mesh.test\nnameserver {name_server}\noptions ndots:1\n"),
        )?;
        let dns_server = topo.spawn_dns_server(
            &[name_server, other_server],
            &[("mesh.test", VIA_SERVER), ("upstream.test", UPSTREAM_ONLY)],
        )?;
        let dns_proxy = topo.spawn_dns_proxy(SocketAddr::from((name_server, 53)), VIA_PROXY)?;
        let pod = Intercepted::bare(topo);
        let mut all = vec!["--resolv-conf", resolv_conf.path_str()];
        all.extend(flags);
        pod.init(&all)?;
        Ok(Self {
            pod,
            resolv_conf,
            _dns_server: dns_server,
            dns_proxy,
        })
    }

    fn topo(&self) -> &Topology {
        &self.pod.topo
    }

    /// The addresses a query from `who` to `server` got, asserting the answer came (as far as
    /// the application can tell) from `server` itself.
    fn ask(
        &self,
        who: Identity,
        server: Ipv4Addr,
        name: &str,
        t: DnsTransport,
    ) -> Result<Vec<Ipv4Addr>> {
        let to = SocketAddr::from((server, 53));
        let r = self.topo().dns_query(who, to, name, t)?;
        anyhow::ensure!(r.error.is_none(), "{t:?} query to {to}: {r:?}");
        anyhow::ensure!(
            r.from.as_deref() == Some(to.to_string().as_str()),
            "{t:?}: the answer must appear to come from {to}: {r:?}"
        );
        Ok(r.addresses)
    }

    /// The proxy's next log line: (proto, name, answered_by).
    fn proxy_saw(&self) -> Option<(String, String, String)> {
        let line = self
            .dns_proxy
            .next_stdout_line(std::time::Duration::from_secs(2))?;
        let l: interceptor_tests::dns::DnsProxyLine = serde_json::from_str(&line).ok()?;
        Some((l.proto, l.name, l.answered_by))
    }
}

#[test]
fn dns_to_the_pods_name_server_reaches_the_dns_proxy_over_every_transport() -> Result<()> {
    let p = DnsPod::new("dns", &["--redirect-dns", "-i", "*"])?;
    let ns = p.topo().server_ip;
    for t in DnsTransport::ALL {
        assert_eq!(
            p.ask(Identity::APP, ns, "a.mesh.test", t)?,
            vec![VIA_PROXY],
            "{t:?}"
        );
        let proto = if t == DnsTransport::Tcp { "tcp" } else { "udp" };
        assert_eq!(
            p.proxy_saw(),
            Some((proto.into(), "a.mesh.test".into(), "proxy".into())),
            "{t:?}"
        );
    }
    // Names the proxy does not know are forwarded by it, as the proxy user, to the real server:
    // not captured again (no loop), and the application gets the server's answer.
    assert_eq!(
        p.ask(Identity::APP, ns, "b.upstream.test", DnsTransport::Udp)?,
        vec![UPSTREAM_ONLY]
    );
    assert_eq!(
        p.proxy_saw(),
        Some(("udp".into(), "b.upstream.test".into(), "upstream".into()))
    );
    // The proxy's own queries go straight to the server.
    for t in DnsTransport::ALL {
        assert_eq!(
            p.ask(Identity::PROXY, ns, "a.mesh.test", t)?,
            vec![VIA_SERVER],
            "{t:?}"
        );
    }
    // A server that is not in resolv.conf is not captured (no --capture-all-dns): UDP goes
    // direct; TCP follows the other rules (here -i '*', but no sidecar listens: it fails).
    let other = p.topo().server_extra_ips[0];
    assert_eq!(
        p.ask(Identity::APP, other, "a.mesh.test", DnsTransport::Udp)?,
        vec![VIA_SERVER]
    );

    let c = p.pod.counters()?;
    assert!(c["dns_captured"].as_u64() >= Some(4), "{c}");
    assert!(c["dns_reply_source_restored"].as_u64() >= Some(2), "{c}");
    Ok(())
}

#[test]
fn real_resolvers_get_the_dns_proxys_answers() -> Result<()> {
    let p = DnsPod::new("dnsres", &["--redirect-dns"])?;
    let ns = p.topo().server_ip;
    // dig checks that the reply comes from the server it asked.
    assert_eq!(
        p.topo().dig(Identity::APP, ns, "c.mesh.test", false)?,
        vec![VIA_PROXY.to_string()]
    );
    assert_eq!(
        p.topo().dig(Identity::APP, ns, "c.mesh.test", true)?,
        vec![VIA_PROXY.to_string()]
    );
    // glibc's getaddrinfo, reading the pod's resolv.conf.
    assert_eq!(
        p.topo()
            .getaddrinfo(Identity::APP, p.resolv_conf.path(), "d.mesh.test")?,
        vec![VIA_PROXY.to_string()]
    );
    assert_eq!(
        p.topo()
            .getaddrinfo(Identity::PROXY, p.resolv_conf.path(), "d.mesh.test")?,
        vec![VIA_SERVER.to_string()]
    );
    Ok(())
}

#[test]
fn capture_all_dns_takes_every_server_and_without_redirect_dns_nothing_is_taken() -> Result<()> {
    let p = DnsPod::new("dnsall", &["--redirect-dns", "--capture-all-dns"])?;
    let other = p.topo().server_extra_ips[0];
    for t in DnsTransport::ALL {
        assert_eq!(
            p.ask(Identity::APP, other, "e.mesh.test", t)?,
            vec![VIA_PROXY],
            "{t:?}"
        );
    }
    // Re-init without --redirect-dns: DNS goes where it was sent again.
    p.pod.init(&["-i", "*"])?;
    let ns = p.topo().server_ip;
    for t in [DnsTransport::Udp, DnsTransport::UdpConnected] {
        assert_eq!(
            p.ask(Identity::APP, ns, "e.mesh.test", t)?,
            vec![VIA_SERVER],
            "{t:?}"
        );
    }
    Ok(())
}

#[test]
fn redirect_dns_without_name_servers_is_off_with_a_warning() -> Result<()> {
    let topo = Topology::new("dnsnone")?;
    let empty = TempFile::new(&format!("{}-resolv.conf", topo.name), "")?;
    let pod = Intercepted::bare(topo);
    let out = pod.try_init(&[
        "--resolv-conf",
        empty.path_str(),
        "--redirect-dns",
        "--dry-run",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("DNS capture is off"), "{stderr}");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(plan["dns_capture"], "off", "{plan}");
    Ok(())
}
