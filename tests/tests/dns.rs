//! DNS capture (`--redirect-dns`) on the real kernel: a real DNS server (dnsmasq) in the server
//! namespace, on IPv4 and IPv6 addresses, the DNS proxy stand-in on 127.0.0.1:15053 and
//! [::1]:15053 in the pod, and real clients in the pod (our query tool over each transport and
//! from a dual-stack socket, `dig`, glibc's getaddrinfo).
//!
//! The proxy answers `*.mesh.test` itself with 10.200.9.9; the DNS server answers it with
//! 10.200.8.8, so every answer says which way the query went.
//!
//! The tests of `per_family!` run once per family of the name server (`ipv4::...`,
//! `ipv6::...`); the test pods' first address is IPv4, so IPv6 is captured with
//! `--dual-stack`, as with istio-iptables.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::Result;
use interceptor_tests::family::Family;
use interceptor_tests::{DnsTransport, Identity, Intercepted, TempFile, Topology, per_family};

per_family!(
    dns_to_the_pods_name_server_reaches_the_dns_proxy_over_every_transport,
    real_resolvers_get_the_dns_proxys_answers,
);

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
    /// resolv.conf names the server's first IPv4 and first IPv6 address.
    fn new(tag: &str, flags: &[&str]) -> Result<Self> {
        let topo = Topology::new(tag)?;
        let servers = [topo.server_ip.into(), topo.server_ip6.into()];
        Self::with_name_servers(topo, &servers, flags)
    }

    fn with_name_servers(topo: Topology, name_servers: &[IpAddr], flags: &[&str]) -> Result<Self> {
        let mut conf = "search mesh.test\n".to_string();
        for ns in name_servers {
            conf.push_str(&format!("nameserver {ns}\n"));
        }
        conf.push_str("options ndots:1\n");
        let resolv_conf = TempFile::new(&format!("{}-resolv.conf", topo.name), &conf)?;
        let dns_server = topo.spawn_dns_server(
            &[
                topo.server_ip.into(),
                topo.server_extra_ips[0].into(),
                topo.server_ip6.into(),
                topo.server_extra_ips6[0].into(),
            ],
            &[("mesh.test", VIA_SERVER), ("upstream.test", UPSTREAM_ONLY)],
        )?;
        let dns_proxy = topo.spawn_dns_proxy(SocketAddr::from((topo.server_ip, 53)), VIA_PROXY)?;
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
        server: impl Into<IpAddr>,
        name: &str,
        t: DnsTransport,
    ) -> Result<Vec<Ipv4Addr>> {
        let to = SocketAddr::new(server.into(), 53);
        let r = self.topo().dns_query(who, to, name, t)?;
        anyhow::ensure!(r.error.is_none(), "{t:?} query to {to}: {r:?}");
        anyhow::ensure!(
            r.from.as_deref() == Some(to.to_string().as_str()),
            "{t:?}: the answer must appear to come from {to}: {r:?}"
        );
        Ok(r.addresses)
    }

    /// `ask` from a dual-stack socket dialling `::ffff:<server>`: the answer must appear to
    /// come from that mapped address.
    fn ask_dual_stack(
        &self,
        who: Identity,
        server: Ipv4Addr,
        name: &str,
        t: DnsTransport,
    ) -> Result<Vec<Ipv4Addr>> {
        let to = SocketAddrV4::new(server, 53);
        let r = self.topo().dns_query_dual_stack(who, to, name, t)?;
        let mapped = SocketAddr::new(server.to_ipv6_mapped().into(), 53);
        anyhow::ensure!(r.error.is_none(), "{t:?} query to {mapped}: {r:?}");
        anyhow::ensure!(
            r.from.as_deref() == Some(mapped.to_string().as_str()),
            "{t:?}: the answer must appear to come from {mapped}: {r:?}"
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

/// Every transport to the pod's name server reaches the DNS proxy, and its answer appears to
/// come from the name server; names the proxy forwards, the proxy's own queries and UDP to
/// another server (not in resolv.conf) reach the real server.
fn dns_to_the_pods_name_server_reaches_the_dns_proxy_over_every_transport(f: Family) -> Result<()> {
    // Sent to 127.0.0.1:15053 or [::1]:15053; the reply (and a connected socket's peer) shows
    // the name server's address, port 53.
    let p = DnsPod::new(&f.tag("dns"), &f.capture(&["--redirect-dns", "-i", "*"]))?;
    let (ns, [other, ..]) = (f.server_ip(p.topo()), f.server_extra_ips(p.topo()));
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
    // direct (TCP would follow the other rules).
    assert_eq!(
        p.ask(Identity::APP, other, "a.mesh.test", DnsTransport::Udp)?,
        vec![VIA_SERVER]
    );
    let c = p.pod.counters()?;
    assert!(c["dns_captured"].as_u64() >= Some(4), "{c}");
    assert!(c["dns_reply_source_restored"].as_u64() >= Some(2), "{c}");
    Ok(())
}

/// dig and glibc's getaddrinfo, with resolv.conf naming only the family's name server.
fn real_resolvers_get_the_dns_proxys_answers(f: Family) -> Result<()> {
    let topo = Topology::new(&f.tag("dnsres"))?;
    let servers = [f.server_ip(&topo)];
    let p = DnsPod::with_name_servers(topo, &servers, &f.capture(&["--redirect-dns"]))?;
    let ns = servers[0];
    // dig (-4 or -6 by the server's address) checks that the reply comes from the server it
    // asked.
    for tcp in [false, true] {
        assert_eq!(
            p.topo().dig(Identity::APP, ns, "c.mesh.test", tcp)?,
            vec![VIA_PROXY.to_string()],
            "tcp: {tcp}"
        );
    }
    assert_eq!(
        p.topo().dig(Identity::PROXY, ns, "c.mesh.test", false)?,
        vec![VIA_SERVER.to_string()]
    );
    // glibc's getaddrinfo, reading the pod's resolv.conf.
    for (who, want) in [(Identity::APP, VIA_PROXY), (Identity::PROXY, VIA_SERVER)] {
        assert_eq!(
            p.topo()
                .getaddrinfo(who, p.resolv_conf.path(), "d.mesh.test")?,
            vec![want.to_string()],
            "{who:?}"
        );
    }
    Ok(())
}

#[test]
fn capture_all_dns_takes_every_server_and_without_redirect_dns_nothing_is_taken() -> Result<()> {
    let p = DnsPod::new(
        "dnsall",
        &["--redirect-dns", "--capture-all-dns", "--dual-stack"],
    )?;
    let others: [IpAddr; 2] = [
        p.topo().server_extra_ips[0].into(),
        p.topo().server_extra_ips6[0].into(),
    ];
    for (other, t) in others
        .into_iter()
        .flat_map(|o| DnsTransport::ALL.map(|t| (o, t)))
    {
        assert_eq!(
            p.ask(Identity::APP, other, "e.mesh.test", t)?,
            vec![VIA_PROXY],
            "{other} {t:?}"
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

#[test]
fn each_family_is_decided_by_its_own_name_servers_and_mapped_ones_by_ipv4s() -> Result<()> {
    // resolv.conf names only the IPv6 server: IPv4 DNS (also from a dual-stack socket, which
    // is IPv4 on the wire) is not captured; IPv6 DNS is.
    let topo = Topology::new("dns6only")?;
    let servers = [topo.server_ip6.into()];
    let p = DnsPod::with_name_servers(topo, &servers, &["--redirect-dns", "--dual-stack"])?;
    let (ns4, ns6) = (p.topo().server_ip, p.topo().server_ip6);
    for t in [DnsTransport::Udp, DnsTransport::UdpConnected] {
        assert_eq!(
            p.ask(Identity::APP, ns6, "f.mesh.test", t)?,
            vec![VIA_PROXY]
        );
        assert_eq!(
            p.ask(Identity::APP, ns4, "f.mesh.test", t)?,
            vec![VIA_SERVER]
        );
        assert_eq!(
            p.ask_dual_stack(Identity::APP, ns4, "f.mesh.test", t)?,
            vec![VIA_SERVER],
            "{t:?}"
        );
    }
    Ok(())
}

#[test]
fn a_dual_stack_socket_asking_an_ipv4_name_server_gets_the_proxy_and_a_mapped_source() -> Result<()>
{
    let topo = Topology::new("dnsmapped")?;
    let servers = [topo.server_ip.into()];
    let p = DnsPod::with_name_servers(topo, &servers, &["--redirect-dns", "--dual-stack"])?;
    let ns = p.topo().server_ip;
    // Sent to ::ffff:127.0.0.1:15053 (the proxy's IPv4 socket); the reply, or the connected
    // socket's peer, shows ::ffff:<ns>:53, as resolvers on dual-stack sockets require.
    for t in DnsTransport::ALL {
        assert_eq!(
            p.ask_dual_stack(Identity::APP, ns, "g.mesh.test", t)?,
            vec![VIA_PROXY],
            "{t:?}"
        );
        assert_eq!(
            p.ask_dual_stack(Identity::PROXY, ns, "g.mesh.test", t)?,
            vec![VIA_SERVER],
            "{t:?}"
        );
    }
    Ok(())
}
