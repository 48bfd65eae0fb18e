//! The DNS side of the test topology: a real DNS server (dnsmasq) in the server namespace, the
//! DNS proxy stand-in on 15053 in the pod, and real resolver clients in the pod.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::dns::DnsQueryResult;
use crate::process::{Identity, Process};
use crate::topology::{Place, Topology};
use crate::{DNS_PROXY_BIN, DNS_QUERY_BIN, bin_path};

/// Bound for a server to start listening, and for one resolver call.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How `interceptor-dns-query` sends its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsTransport {
    /// `sendto()` on an unconnected UDP socket.
    Udp,
    /// `connect()` + `send()` on a UDP socket (glibc's way).
    UdpConnected,
    Tcp,
}

impl DnsTransport {
    pub const ALL: [DnsTransport; 3] = [Self::Udp, Self::UdpConnected, Self::Tcp];

    fn arg(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::UdpConnected => "udp-connected",
            Self::Tcp => "tcp",
        }
    }
}

impl Topology {
    /// Starts dnsmasq in the server namespace on port 53 of each of `listen` (either family),
    /// answering each `(domain, address)` of `records` (the domain and every name under it)
    /// with an A record, and nothing else.
    pub fn spawn_dns_server(
        &self,
        listen: &[IpAddr],
        records: &[(&str, Ipv4Addr)],
    ) -> Result<Process> {
        let mut cmd = self.command(&Place::Server, Identity::ROOT, "dnsmasq")?;
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            "--user=root",
            "--group=root",
            "--log-facility=-",
            "--pid-file=", // none: nothing to leave behind
        ]);
        for ip in listen {
            cmd.arg(format!("--listen-address={ip}"));
        }
        for (domain, ip) in records {
            cmd.arg(format!("--address=/{domain}/{ip}"));
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut server = self.spawn(&mut cmd)?;
        for ip in listen {
            server.wait_listening(SocketAddr::from((*ip, 53)), START_TIMEOUT)?;
        }
        Ok(server)
    }

    /// Starts `interceptor-dns-proxy` in the pod as the proxy user on 127.0.0.1:15053 and
    /// [::1]:15053 (as istio-agent in a dual-stack pod), answering `*.mesh.test` with
    /// `local_answer` and forwarding the rest to `upstream`. Its query log is on stdout.
    pub fn spawn_dns_proxy(&self, upstream: SocketAddr, local_answer: Ipv4Addr) -> Result<Process> {
        let mut cmd = self.command(&Place::Pod, Identity::PROXY, bin_path(DNS_PROXY_BIN)?)?;
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--bind",
            "::1",
            "--upstream",
            &upstream.to_string(),
            "--local-answer",
            &local_answer.to_string(),
            "--log",
        ])
        .stdout(Stdio::piped());
        let mut proxy = self.spawn(&mut cmd)?;
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            proxy.wait_listening(SocketAddr::new(ip, 15053), START_TIMEOUT)?;
        }
        Ok(proxy)
    }

    /// Starts a UDP-only DNS stand-in at `place` on `bind`:`port` that answers every A query
    /// with `answer` (e.g. a name server in the server namespace, or the DNS proxy's UDP side
    /// when something else serves TCP on its port).
    pub fn spawn_dns_responder(
        &self,
        place: &Place,
        who: Identity,
        bind: IpAddr,
        port: u16,
        answer: Ipv4Addr,
    ) -> Result<Process> {
        let mut cmd = self.command(place, who, bin_path(DNS_PROXY_BIN)?)?;
        cmd.args([
            "--bind",
            &bind.to_string(),
            "--port",
            &port.to_string(),
            "--local-answer",
            &answer.to_string(),
            "--udp-only",
            "--ready-line",
        ])
        .stdout(Stdio::piped());
        let responder = self.spawn(&mut cmd)?;
        match responder.next_stdout_line(START_TIMEOUT).as_deref() {
            Some("ready") => Ok(responder),
            other => bail!("DNS responder on {bind}:{port} did not start: {other:?}"),
        }
    }

    /// One A query from the pod as `who`, with `interceptor-dns-query` (a socket of the
    /// server's family).
    pub fn dns_query(
        &self,
        who: Identity,
        server: SocketAddr,
        name: &str,
        transport: DnsTransport,
    ) -> Result<DnsQueryResult> {
        self.run_dns_query(who, server, name, transport, false)
    }

    /// One A query to the IPv4 `server` from a dual-stack IPv6 socket, which dials it as
    /// `::ffff:a.b.c.d`.
    pub fn dns_query_dual_stack(
        &self,
        who: Identity,
        server: std::net::SocketAddrV4,
        name: &str,
        transport: DnsTransport,
    ) -> Result<DnsQueryResult> {
        self.run_dns_query(who, server.into(), name, transport, true)
    }

    fn run_dns_query(
        &self,
        who: Identity,
        server: SocketAddr,
        name: &str,
        transport: DnsTransport,
        dual_stack: bool,
    ) -> Result<DnsQueryResult> {
        let mut cmd = self.command(&Place::Pod, who, bin_path(DNS_QUERY_BIN)?)?;
        cmd.args([&server.to_string(), name, "--transport", transport.arg()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if dual_stack {
            cmd.arg("--dual-stack");
        }
        let done = self.spawn(&mut cmd)?.wait(QUERY_TIMEOUT)?;
        if !done.status.success() {
            bail!("dns query failed ({}): {}", done.status, done.stderr.trim());
        }
        serde_json::from_str(done.stdout.trim())
            .with_context(|| format!("dns query output {:?}", done.stdout))
    }

    /// `dig +short @server name` (over TCP with `tcp`; `-6` for an IPv6 server) from the pod
    /// as `who`: the addresses.
    pub fn dig(
        &self,
        who: Identity,
        server: impl Into<IpAddr>,
        name: &str,
        tcp: bool,
    ) -> Result<Vec<String>> {
        let server = server.into();
        let mut cmd = self.command(&Place::Pod, who, "dig")?;
        cmd.arg(if server.is_ipv6() { "-6" } else { "-4" });
        cmd.args([
            "+short",
            "+time=2",
            "+tries=1",
            if tcp { "+tcp" } else { "+notcp" },
            &format!("@{server}"),
            name,
            "A",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let done = self.spawn(&mut cmd)?.wait(QUERY_TIMEOUT)?;
        Ok(done.stdout.lines().map(|l| l.trim().to_string()).collect())
    }

    /// glibc's `getaddrinfo` (through `getent ahostsv4`) from the pod as `who`, with
    /// `resolv_conf` as /etc/resolv.conf (bind-mounted in a private mount namespace): the
    /// addresses, or an empty list when the name did not resolve.
    pub fn getaddrinfo(
        &self,
        who: Identity,
        resolv_conf: &Path,
        name: &str,
    ) -> Result<Vec<String>> {
        // Mounting needs root; the lookup itself runs as `who`.
        let mut cmd = self.command(&Place::Pod, Identity::ROOT, "unshare")?;
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/resolv.conf && exec setpriv --reuid="$1" --regid="$2" --clear-groups getent ahostsv4 "$3""#,
        ])
        .arg(resolv_conf)
        .args([&who.uid.to_string(), &who.gid.to_string(), name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let done = self.spawn(&mut cmd)?.wait(QUERY_TIMEOUT)?;
        let mut addrs: Vec<String> = done
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        addrs.dedup();
        Ok(addrs)
    }
}
