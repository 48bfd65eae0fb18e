//! The iptables backend on the real kernel, with both iptables flavours: `interceptor init
//! --backend iptables` writes istio-iptables' rules into a pod namespace the test creates, and
//! real connections take the path istio-init's rules give them; re-init replaces, clean
//! removes exactly ours, and a failed restore changes nothing.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::Deref,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, ensure};
use interceptor_tests::outcome::{assert_exit, assert_success};
use interceptor_tests::{
    Backend, Identity, Intercepted, IptablesMode, Place, ProbeOptions, ProbeResult, SEED_FLAGS,
    Side, TempFile, Topology, addr, addr6, any, any6, interceptor,
};

/// What istio-iptables writes for the seed's flags in an IPv4 pod (spec 3.2).
const SEED_RULES: &str = "* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";

/// A pod intercepted by the iptables backend with one flavour (not yet: call `init`); the
/// shared fixture cleans on drop, and the rules go with the namespace anyway.
struct Pod {
    pod: Intercepted,
    mode: IptablesMode,
}

impl Deref for Pod {
    type Target = Intercepted;
    fn deref(&self) -> &Intercepted {
        &self.pod
    }
}

impl Pod {
    fn new(tag: &str, mode: IptablesMode) -> Result<Self> {
        let mut pod = Intercepted::bare(Topology::new(&format!(
            "ipt-{tag}-{}",
            &mode.as_str()[..1]
        ))?);
        pod.backend = Backend::Iptables(mode);
        Ok(Self { pod, mode })
    }

    fn netns(&self) -> String {
        self.topo.netns_path(Side::Pod).display().to_string()
    }

    /// `iptables-<flavour> args` (`ip6tables-...` with `v6`) inside the pod's namespace.
    fn iptables(&self, v6: bool, args: &[&str]) -> Result<String> {
        run_in_pod(&self.topo, &tool(self.mode, v6, ""), args)
    }

    /// `iptables-<flavour>-save` of `flavour` (`ip6tables-...` with `v6`), without comments
    /// and counters.
    fn save_of(&self, mode: IptablesMode, v6: bool) -> Result<String> {
        let text = run_in_pod(&self.topo, &tool(mode, v6, "-save"), &[])?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.split_once(" [") {
                Some((decl, _)) if l.starts_with(':') => format!("{decl}\n"),
                _ => format!("{l}\n"),
            })
            .collect())
    }

    fn save(&self, v6: bool) -> Result<String> {
        self.save_of(self.mode, v6)
    }
}

/// `iptables-legacy-save`, `ip6tables-nft`, ...
fn tool(mode: IptablesMode, v6: bool, suffix: &str) -> String {
    let family = if v6 { "ip6tables" } else { "iptables" };
    format!("{family}-{}{suffix}", mode.as_str())
}

fn run_in_pod(topo: &Topology, program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.pod_netns, program])
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where a connection ended up.
#[derive(Debug, PartialEq, Eq)]
enum Path_ {
    /// Through the sidecar, on this port, which read this original destination.
    Sidecar(u16, SocketAddr),
    /// Straight to the server, which accepted on this address.
    Direct(SocketAddr),
    Failed(String),
}

fn path_of(r: &ProbeResult) -> Path_ {
    if let Some(s) = r.sidecar_line() {
        return match s.orig {
            Ok(orig) => Path_::Sidecar(s.port, orig),
            Err(e) => Path_::Failed(format!("sidecar without original destination: {e}")),
        };
    }
    match r.server_line() {
        Some(line) => Path_::Direct(line.local),
        None => Path_::Failed(format!("{r:?}")),
    }
}

/// Lines of `save` that mention one of istio's chains.
fn istio_lines(save: &str) -> Vec<&str> {
    save.lines().filter(|l| l.contains("ISTIO_")).collect()
}

macro_rules! both_flavours {
    ($($name:ident),* $(,)?) => {
        mod legacy {
            $(#[test]
            fn $name() -> anyhow::Result<()> {
                super::$name(super::IptablesMode::Legacy)
            })*
        }
        mod nft {
            $(#[test]
            fn $name() -> anyhow::Result<()> {
                super::$name(super::IptablesMode::Nft)
            })*
        }
    };
}

both_flavours!(
    seed_flags_capture_outbound_and_inbound,
    reinit_replaces_and_clean_removes_only_ours,
    a_failed_restore_changes_nothing,
    dual_stack_writes_both_families,
);

fn seed_flags_capture_outbound_and_inbound(mode: IptablesMode) -> Result<()> {
    let pod = Pod::new("seed", mode)?;
    pod.init(&SEED_FLAGS)?;
    let t = &pod.topo;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[any(8080)], &[])?;
    let _app = t.spawn_server(&Place::Pod, Identity::APP, &[any(9080)], &[])?;
    let _sidecar = t.spawn_sidecar(
        &[15001, 15006],
        &["--announce", "--upstream-source", "127.0.0.6"],
    )?;
    let target = addr(t.server_ip, 8080);

    // The application goes through the sidecar, whose SO_ORIGINAL_DST is the dialled address,
    // and whose own upstream connection reaches the server directly.
    let r = pod.probe(Identity::APP, target)?;
    assert_eq!(path_of(&r), Path_::Sidecar(15001, target), "{r:?}");
    let upstream = r
        .server_line()
        .context("the server answered through the sidecar")?;
    assert_eq!(
        (upstream.local, upstream.peer.ip()),
        (target, IpAddr::V4(t.pod_ip))
    );
    assert_eq!(
        r.peer_name,
        Some(target),
        "conntrack shows the dialled address"
    );
    // The proxy's uid, and its gid alone, go direct; root is an application like any other.
    for (who, want) in [
        (Identity::PROXY, Path_::Direct(target)),
        (Identity::new(2000, 1337), Path_::Direct(target)),
        (Identity::ROOT, Path_::Sidecar(15001, target)),
    ] {
        let r = pod.probe(who, target)?;
        assert_eq!(path_of(&r), want, "{who:?}: {r:?}");
    }
    // Localhost and the pod's own address stay local.
    let app = addr(t.pod_ip, 9080);
    let r = pod.probe(Identity::APP, app)?;
    assert_eq!(path_of(&r), Path_::Direct(app), "{r:?}");

    // Inbound to -b 9080 from outside the pod goes to 15006, then on to the application from
    // 127.0.0.6 (Envoy's passthrough source, which the rules let through).
    let r = t.probe_from(&Place::Server, Identity::APP, app, &ProbeOptions::default())?;
    assert_eq!(path_of(&r), Path_::Sidecar(15006, app), "{r:?}");
    let delivered = r.server_line().context("the application answered")?;
    assert_eq!(
        delivered.peer.ip(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
        "{r:?}"
    );
    // Another port is not captured inbound.
    let _other = t.spawn_server(&Place::Pod, Identity::APP, &[any(9090)], &[])?;
    let other = addr(t.pod_ip, 9090);
    let r = t.probe_from(
        &Place::Server,
        Identity::APP,
        other,
        &ProbeOptions::default(),
    )?;
    assert_eq!(path_of(&r), Path_::Direct(other), "{r:?}");

    // The namespace holds istio's chains, in this flavour only.
    let save = pod.save(false)?;
    for chain in [
        "ISTIO_INBOUND",
        "ISTIO_REDIRECT",
        "ISTIO_IN_REDIRECT",
        "ISTIO_OUTPUT",
    ] {
        assert!(
            save.contains(&format!(":{chain} -\n")),
            "{chain} missing:\n{save}"
        );
    }
    assert!(save.contains("-A OUTPUT -j ISTIO_OUTPUT\n"), "{save}");
    assert!(
        save.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"),
        "{save}"
    );
    let other = match mode {
        IptablesMode::Legacy => IptablesMode::Nft,
        IptablesMode::Nft => IptablesMode::Legacy,
    };
    assert!(istio_lines(&pod.save_of(other, false)?).is_empty());
    assert!(
        istio_lines(&pod.save(true)?).is_empty(),
        "IPv6 is not enabled"
    );
    Ok(())
}

fn reinit_replaces_and_clean_removes_only_ours(mode: IptablesMode) -> Result<()> {
    let pod = Pod::new("reinit", mode)?;
    let t = &pod.topo;
    // The user's own rules, before and after ours.
    pod.iptables(
        false,
        &[
            "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-j", "RETURN",
        ],
    )?;
    pod.iptables(
        false,
        &[
            "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
        ],
    )?;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[any(8080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    let [target, other] = [addr(t.server_ip, 8080), addr(t.server_extra_ips[0], 8080)];

    pod.init(&[
        "-i",
        "*",
        "-c",
        "eth9",
        "--redirect-dns",
        "--capture-all-dns",
    ])?;
    assert_eq!(
        path_of(&pod.probe(Identity::APP, target)?),
        Path_::Sidecar(15001, target)
    );
    pod.iptables(
        false,
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "eth0",
            "-j",
            "ACCEPT",
        ],
    )?;

    // New options replace the old rules: -x excludes the server, nothing is left of -c or DNS.
    let exclude = format!("{}/32", t.server_ip);
    pod.init(&["-i", "*", "-x", &exclude])?;
    assert_eq!(
        path_of(&pod.probe(Identity::APP, target)?),
        Path_::Direct(target)
    );
    assert_eq!(
        path_of(&pod.probe(Identity::APP, other)?),
        Path_::Sidecar(15001, other)
    );
    let save = pod.save(false)?;
    assert_eq!(
        save.matches("-A OUTPUT -j ISTIO_OUTPUT\n").count(),
        1,
        "{save}"
    );
    assert!(
        !save.contains("eth9") && !save.contains("ISTIO_OUTPUT_DNS"),
        "{save}"
    );
    assert!(!save.contains("CT --zone"), "{save}");
    // The same options again: the same rules, not twice as many.
    pod.init(&["-i", "*", "-x", &exclude])?;
    assert_eq!(istio_lines(&pod.save(false)?), istio_lines(&save));

    // Clean removes exactly ours; the user's rules stay, traffic goes direct.
    assert_success(&pod.clean());
    let save = pod.save(false)?;
    assert!(istio_lines(&save).is_empty(), "{save}");
    for user in [
        "-A OUTPUT -p udp -m udp --dport 9999 -j RETURN\n",
        "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n",
        "-A POSTROUTING -o eth0 -j ACCEPT\n",
    ] {
        assert!(save.contains(user), "{user} is gone:\n{save}");
    }
    assert_eq!(
        path_of(&pod.probe(Identity::APP, other)?),
        Path_::Direct(other)
    );
    // Cleaning again is not an error.
    assert_success(&pod.clean());
    Ok(())
}

fn a_failed_restore_changes_nothing(mode: IptablesMode) -> Result<()> {
    let pod = Pod::new("fail", mode)?;
    let t = &pod.topo;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[any(8080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    let target = addr(t.server_ip, 8080);

    // A chain of the user's still jumps to a chain named like ours (left over from an earlier
    // istio-init, say): ours cannot be replaced, and nothing at all may be applied.
    pod.iptables(false, &["-t", "nat", "-N", "ISTIO_REDIRECT"])?;
    pod.iptables(false, &["-t", "nat", "-N", "USER_CHAIN"])?;
    pod.iptables(
        false,
        &["-t", "nat", "-A", "USER_CHAIN", "-j", "ISTIO_REDIRECT"],
    )?;
    let before = pod.save(false)?;
    let err = assert_exit(
        &pod.try_init(&SEED_FLAGS),
        1,
        "-X ISTIO_REDIRECT",
        &SEED_FLAGS,
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(
        err.matches("interceptor: error").count(),
        1,
        "one error: {err}"
    );
    assert_eq!(pod.save(false)?, before, "a failed init changed the rules");
    assert_eq!(
        path_of(&pod.probe(Identity::APP, target)?),
        Path_::Direct(target)
    );

    // The same with rules of ours in place: re-init fails and the earlier rules stay active.
    pod.iptables(false, &["-t", "nat", "-F", "USER_CHAIN"])?;
    pod.init(&SEED_FLAGS)?;
    pod.iptables(
        false,
        &["-t", "nat", "-A", "USER_CHAIN", "-j", "ISTIO_REDIRECT"],
    )?;
    let before = pod.save(false)?;
    let exclude = format!("{}/32", t.server_ip);
    let out = pod.try_init(&["-i", "*", "-x", &exclude]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pod.save(false)?,
        before,
        "a failed re-init changed the rules"
    );
    assert_eq!(
        path_of(&pod.probe(Identity::APP, target)?),
        Path_::Sidecar(15001, target)
    );
    // Once the user's rule is gone, clean works again.
    pod.iptables(false, &["-t", "nat", "-F", "USER_CHAIN"])?;
    assert_success(&pod.clean());
    assert!(istio_lines(&pod.save(false)?).is_empty());
    Ok(())
}

fn dual_stack_writes_both_families(mode: IptablesMode) -> Result<()> {
    // The topology's pod has 10.200.0.2 and fd00:200::2.
    let pod = Pod::new("dual", mode)?;
    // Without --dual-stack the first address (IPv4) decides, as istio-iptables does.
    pod.init(&SEED_FLAGS)?;
    assert!(istio_lines(&pod.save(true)?).is_empty());
    let out = pod.try_init(&[&SEED_FLAGS[..], &["--dual-stack", "--dry-run"]].concat());
    assert!(out.status.success());
    let dry_run = String::from_utf8_lossy(&out.stdout);
    assert_eq!(dry_run.matches("* nat\n").count(), 2, "{dry_run}");
    assert!(dry_run.starts_with(SEED_RULES), "{dry_run}");

    let v4_before = pod.save(false)?;
    pod.init(&[&SEED_FLAGS[..], &["--dual-stack"]].concat())?;
    let v6 = pod.save(true)?;
    assert!(
        v6.contains("-A ISTIO_OUTPUT -d ::1/128 -j RETURN\n"),
        "{v6}"
    );
    assert!(
        v6.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN\n"),
        "{v6}"
    );
    assert_eq!(istio_lines(&pod.save(false)?), istio_lines(&v4_before));
    let lo = Command::new("ip")
        .args(["-n", &pod.topo.pod_netns, "-6", "addr", "show", "dev", "lo"])
        .output()?;
    assert!(
        String::from_utf8_lossy(&lo.stdout).contains("::6/128"),
        "::6 is on lo"
    );
    // IPv6 connections are captured by ip6tables: the sidecar's IP6T_SO_ORIGINAL_DST answers.
    let t = &pod.topo;
    let _server = t.spawn_server(&Place::Server, Identity::APP, &[any(8080), any6(8080)], &[])?;
    let _sidecar = t.spawn_sidecar(&[15001], &["--announce"])?;
    let target6 = addr6(t.server_ip6, 8080);
    let r = pod.probe(Identity::APP, target6)?;
    assert_eq!(path_of(&r), Path_::Sidecar(15001, target6), "{r:?}");
    let r = pod.probe(Identity::PROXY, target6)?;
    assert_eq!(path_of(&r), Path_::Direct(target6), "{r:?}");

    // An IPv6 restore that fails after the IPv4 one succeeded: IPv4 is put back as it was.
    pod.iptables(true, &["-t", "nat", "-N", "USER_CHAIN"])?;
    pod.iptables(
        true,
        &["-t", "nat", "-A", "USER_CHAIN", "-j", "ISTIO_REDIRECT"],
    )?;
    let (v4_before, v6_before) = (pod.save(false)?, pod.save(true)?);
    let flags = ["-i", "10.0.0.0/8", "--dual-stack"];
    assert_exit(&pod.try_init(&flags), 1, "IPv6", &flags);
    assert_eq!(
        istio_lines(&pod.save(false)?),
        istio_lines(&v4_before),
        "IPv4 rolled back"
    );
    assert_eq!(pod.save(true)?, v6_before);

    // Clean removes both families.
    pod.iptables(true, &["-t", "nat", "-F", "USER_CHAIN"])?;
    assert!(pod.clean().status.success());
    assert!(istio_lines(&pod.save(false)?).is_empty());
    assert!(istio_lines(&pod.save(true)?).is_empty());
    Ok(())
}

#[test]
fn dry_run_prints_the_restore_input_and_changes_nothing() -> Result<()> {
    let pod = Pod::new("dry", IptablesMode::Nft)?;
    let out = pod.try_init(&[&SEED_FLAGS[..], &["--dry-run"]].concat());
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), SEED_RULES);
    assert!(istio_lines(&pod.save(false)?).is_empty());

    // DNS capture matches resolv.conf's servers; with none it is off, with a warning.
    let dns_dry_run = |name: &str, resolv_conf: &str| -> Result<Output> {
        let file = TempFile::new(&format!("{}-{name}", pod.topo.name), resolv_conf)?;
        Ok(pod.try_init(&[
            "--redirect-dns",
            "--resolv-conf",
            file.path_str(),
            "--dry-run",
        ]))
    };
    let out = dns_dry_run(
        "resolv.conf",
        "search svc.cluster.local\nnameserver 10.96.0.10\n",
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 10.96.0.10/32 -j REDIRECT --to-port 15053\n"
        ),
        "{text}"
    );
    let out = dns_dry_run("no-ns-resolv.conf", "search svc.cluster.local\n")?;
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ISTIO_OUTPUT_DNS"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DNS capture is off"));
    Ok(())
}

#[test]
fn unsupported_and_bad_options_are_one_clear_error() -> Result<()> {
    let pod = Pod::new("bad", IptablesMode::Legacy)?;
    let netns = pod.netns();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--iptables-mode", "xtables"], 2, "xtables"),
        (
            vec!["--iptables-mode", "legacy", "-m", "TPROXY"],
            2,
            "TPROXY",
        ),
        (
            vec!["--iptables-mode", "legacy", "-q", "80,http"],
            2,
            "\"http\"",
        ),
        (
            vec![
                "--iptables-mode",
                "legacy",
                "--inbound-fail",
                "open",
                "-b",
                "*",
            ],
            2,
            "--inbound-fail",
        ),
        (
            vec![
                "--iptables-mode",
                "legacy",
                "--resolv-conf",
                "/nonexistent",
                "--redirect-dns",
            ],
            1,
            "/nonexistent",
        ),
    ];
    for (flags, code, needle) in cases {
        let mut args = vec!["init", "--backend", "iptables", "--netns", &netns];
        args.extend(&flags);
        assert_exit(&interceptor(&args), code, needle, &flags);
        assert!(
            istio_lines(&pod.save(false)?).is_empty(),
            "{flags:?} left rules"
        );
    }
    Ok(())
}
