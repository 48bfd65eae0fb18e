//! Self-test of the fixtures, without any eBPF: the topology routes, processes land in the right
//! cgroup, namespace and identity, the test peers speak their formats, and drop cleans up.
//! Needs root.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::panic;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use interceptor_tests::{Identity, Place, ProbeOptions, Side, Topology, netns_path};

const ECHO_PORT: u16 = 8080;
const OUTBOUND_PORT: u16 = 15001;

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// What a topology made, to check after drop that it is gone.
struct Footprint {
    netns: Vec<PathBuf>,
    cgroup_dir: PathBuf,
}

impl Footprint {
    fn of(topology: &Topology) -> Self {
        Self {
            netns: vec![
                netns_path(&topology.pod_netns),
                netns_path(&topology.server_netns),
            ],
            cgroup_dir: topology.cgroup_dir.clone(),
        }
    }

    fn assert_gone(&self) {
        for path in self.netns.iter().chain([&self.cgroup_dir]) {
            assert!(!path.exists(), "{} left behind", path.display());
        }
    }
}

/// The uid and the cgroup (relative to the cgroup2 mount) of a running process.
fn uid_and_cgroup(pid: u32) -> (u32, String) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_owned();
    (uid, v2)
}

fn relative_cgroup(path: &Path) -> String {
    let mount = interceptor_tests::cgroup2_mount().unwrap();
    format!("/{}", path.strip_prefix(mount).unwrap().display())
}

#[test]
fn pod_reaches_server_addresses_and_drop_cleans_up() -> Result<()> {
    let footprint;
    {
        let topology = Topology::new("fixture")?;
        footprint = Footprint::of(&topology);
        let targets = [
            addr(topology.server_ip, ECHO_PORT),
            addr(topology.server_extra_ips[1], ECHO_PORT),
        ];
        let _server = topology.spawn_server(&Place::Server, Identity::ROOT, &targets, &[])?;

        let options = ProbeOptions {
            send: Some("ping\n".to_owned()),
            ..ProbeOptions::default()
        };
        for target in targets {
            let result = topology.probe(Identity::APP, target, &options)?;
            assert!(result.connected, "{result:?}");
            assert_eq!(result.error, None, "{result:?}");
            assert_eq!(result.peer_name, Some(target));
            let banner = result.server_line().expect("server banner");
            assert_eq!(banner.local, target);
            assert_eq!(banner.peer.ip(), topology.pod_ip);
            assert_eq!(Some(banner.peer), result.local);
            assert_eq!(result.lines.last().map(String::as_str), Some("ping"));
        }
    }
    footprint.assert_gone();
    Ok(())
}

#[test]
fn sidecar_without_interception_has_no_original_destination() -> Result<()> {
    let topology = Topology::new("sidecar")?;
    let sidecar = topology.spawn_sidecar(&[OUTBOUND_PORT], &["--announce", "--log"])?;

    let (uid, cgroup) = uid_and_cgroup(sidecar.pid());
    assert_eq!(uid, Identity::PROXY.uid);
    assert_eq!(cgroup, relative_cgroup(&topology.pod_cgroup));

    let target = addr(Ipv4Addr::LOCALHOST, OUTBOUND_PORT);
    let result = topology.probe(Identity::APP, target, &ProbeOptions::default())?;
    assert!(result.connected, "{result:?}");
    let line = result.sidecar_line().expect("sidecar announcement");
    assert_eq!(line.port, OUTBOUND_PORT);
    // ENOENT when nf_conntrack is loaded (no entry), ENOPROTOOPT when it is not.
    let errno = line
        .orig
        .expect_err("no original destination without interception");
    assert!(
        ["ENOENT", "ENOPROTOOPT"].contains(&errno.as_str()),
        "{errno}"
    );

    let log = sidecar
        .next_stdout_line(Duration::from_secs(5))
        .expect("a --log line");
    assert!(log.starts_with("conn port=15001 "), "{log}");
    assert!(log.contains(" orig=error:"), "{log}");
    Ok(())
}

#[test]
fn sidecar_with_a_fixed_upstream_forwards_there() -> Result<()> {
    let topology = Topology::new("sidecar-fixed")?;
    let upstream = addr(topology.server_ip, ECHO_PORT);
    let _server = topology.spawn_server(&Place::Server, Identity::ROOT, &[upstream], &[])?;
    let fixed = format!("15080={upstream}");
    let _sidecar = topology.spawn_sidecar(&[15080], &["--announce", "--upstream", &fixed])?;

    let options = ProbeOptions {
        send: Some("ping\n".to_owned()),
        ..ProbeOptions::default()
    };
    let result = topology.probe(Identity::APP, addr(Ipv4Addr::LOCALHOST, 15080), &options)?;
    assert_eq!(result.error, None, "{result:?}");
    // No interception: no original destination, yet the connection reached the fixed upstream.
    let line = result.sidecar_line().expect("sidecar announcement");
    assert!(line.orig.is_err(), "{line:?}");
    let banner = result.server_line().expect("server banner");
    assert_eq!(banner.local, upstream);
    assert_eq!(banner.peer.ip(), topology.pod_ip);
    assert_eq!(result.lines.last().map(String::as_str), Some("ping"));
    Ok(())
}

#[test]
fn http_server_answers_with_its_banner() -> Result<()> {
    let topology = Topology::new("http")?;
    let target = addr(topology.server_extra_ips[0], 80);
    let _server = topology.spawn_server(
        &Place::Server,
        Identity::ROOT,
        &[target],
        &["--http", "--body-size", "200"],
    )?;
    let options = ProbeOptions {
        http: true,
        ..ProbeOptions::default()
    };
    let result = topology.probe(Identity::new(1000, 1337), target, &options)?;
    assert_eq!(result.error, None, "{result:?}");
    assert_eq!(result.server_line().map(|l| l.local), Some(target));
    let body_len: usize = result.lines.iter().map(|l| l.len() + 1).sum();
    assert_eq!(body_len, 200);
    Ok(())
}

#[test]
fn other_places_and_interfaces() -> Result<()> {
    // Declared before the topology, so dropped after it: the topology must kill these itself.
    let mut sleepers = Vec::new();
    let mut topology = Topology::new("places")?;
    let second = topology.add_pod_interface()?;
    let outside = topology.create_cgroup("outside")?;
    let init = topology.create_cgroup("pod/init")?;

    // A server in the pod, reached from the server namespace over the second interface.
    let inbound = addr(second.pod_ip, 9080);
    let server = topology.spawn_server(&Place::Pod, Identity::APP, &[inbound], &[])?;
    let banner = topology.run_in(Side::Server, || -> std::io::Result<String> {
        let mut text = String::new();
        let mut stream = TcpStream::connect_timeout(&inbound, Duration::from_secs(3))?;
        stream.shutdown(std::net::Shutdown::Write)?;
        stream.read_to_string(&mut text)?;
        Ok(text)
    })??;
    assert!(
        banner.starts_with(&format!(
            "server local={inbound} peer={}:",
            second.server_ip
        )),
        "{banner}"
    );
    assert_eq!(
        uid_and_cgroup(server.pid()),
        (Identity::APP.uid, relative_cgroup(&topology.pod_cgroup))
    );

    // Processes in the pod namespace but other cgroups.
    for cgroup in [outside, init] {
        let place = Place::PodNetns {
            cgroup: cgroup.clone(),
        };
        let mut cmd = topology.command(&place, Identity::new(2000, 2000), "sleep")?;
        cmd.arg("30");
        sleepers.push(topology.spawn(&mut cmd)?);
        assert_eq!(
            uid_and_cgroup(sleepers.last().unwrap().pid()),
            (2000, relative_cgroup(&cgroup))
        );
        let result =
            topology.probe_from(&place, Identity::PROXY, inbound, &ProbeOptions::default())?;
        assert_eq!(result.server_line().map(|l| l.local), Some(inbound));
    }

    // A server in the server namespace and a cgroup of its own reaches the pod over eth0.
    let server_cgroup = topology.create_cgroup("server")?;
    let place = Place::ServerNetns {
        cgroup: server_cgroup.clone(),
    };
    let pod_listener = addr(topology.pod_ip, 9080);
    let _pod_server = topology.spawn_server(&Place::Pod, Identity::APP, &[pod_listener], &[])?;
    let client = topology.probe_from(
        &place,
        Identity::APP,
        pod_listener,
        &ProbeOptions::default(),
    )?;
    let banner = client.server_line().expect("the pod's server answered");
    assert_eq!(banner.peer.ip(), topology.server_ip);
    let mut cmd = topology.command(&place, Identity::APP, "sleep")?;
    cmd.arg("30");
    sleepers.push(topology.spawn(&mut cmd)?);
    assert_eq!(
        uid_and_cgroup(sleepers.last().unwrap().pid()),
        (Identity::APP.uid, relative_cgroup(&server_cgroup))
    );
    Ok(())
}

#[test]
fn drop_cleans_up_after_a_panic() {
    let footprint = panic::catch_unwind(|| {
        // Outlives the topology while unwinding: the topology must kill it itself.
        let _sleeper;
        let topology = Topology::new("panic").unwrap();
        let footprint = Footprint::of(&topology);
        let mut cmd = topology
            .command(&Place::Pod, Identity::APP, "sleep")
            .unwrap();
        cmd.arg("30");
        _sleeper = topology.spawn(&mut cmd).unwrap();
        panic::panic_any(footprint);
    })
    .expect_err("the closure panics")
    .downcast::<Footprint>()
    .expect("the panic carries the footprint");
    footprint.assert_gone();
}
