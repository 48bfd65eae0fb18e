//! What the kernel says about our BPF objects, through bpftool and /proc only (never through
//! the layout of interceptor's pins, which changes with the datapath): the programs attached to
//! given cgroups and network namespaces, the maps those programs use, the objects a process
//! (the daemon) holds open, anything pinned in the bench's own bpffs; their kernel memory
//! (`bytes_memlock`) and run statistics.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::results::{Footprint, ProgramRuns};

/// A loaded program, as `bpftool -j prog show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Program {
    pub id: u32,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub bytes_memlock: u64,
    #[serde(default)]
    pub map_ids: Vec<u32>,
    /// Present only while the kernel's BPF statistics have counted something.
    #[serde(default)]
    pub run_time_ns: u64,
    #[serde(default)]
    pub run_cnt: u64,
    /// Where it is pinned (`bpftool -f`).
    #[serde(default)]
    pub pinned: Vec<String>,
}

/// A map, as `bpftool -j map show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Map {
    pub id: u32,
    #[serde(default)]
    pub bytes_memlock: u64,
    /// Where it is pinned (`bpftool -f`).
    #[serde(default)]
    pub pinned: Vec<String>,
}

/// Every program and map of the machine at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub programs: BTreeMap<u32, Program>,
    pub maps: BTreeMap<u32, Map>,
}

/// Programs and maps counted as ours.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ours {
    pub programs: BTreeSet<u32>,
    pub maps: BTreeSet<u32>,
}

impl Snapshot {
    /// Every program and map, with where each is pinned.
    pub fn take() -> Result<Self> {
        let programs: Vec<Program> = parse_list(&bpftool(&["-f", "prog", "show"])?, "prog show")?;
        let maps: Vec<Map> = parse_list(&bpftool(&["-f", "map", "show"])?, "map show")?;
        Ok(Self {
            programs: programs.into_iter().map(|p| (p.id, p)).collect(),
            maps: maps.into_iter().map(|m| (m.id, m)).collect(),
        })
    }

    /// Whatever is pinned under `root` (a bpffs of our own: nobody else pins there).
    pub fn pinned_under(&self, root: &Path) -> Ours {
        let under = |pins: &[String]| pins.iter().any(|p| Path::new(p).starts_with(root));
        Ours {
            programs: self
                .programs
                .values()
                .filter(|p| under(&p.pinned))
                .map(|p| p.id)
                .collect(),
            maps: self
                .maps
                .values()
                .filter(|m| under(&m.pinned))
                .map(|m| m.id)
                .collect(),
        }
    }

    /// Everything on the machine.
    pub fn machine(&self) -> Footprint {
        Footprint {
            programs: self.programs.len() as u32,
            maps: self.maps.len() as u32,
            program_bytes: self.programs.values().map(|p| p.bytes_memlock).sum(),
            map_bytes: self.maps.values().map(|m| m.bytes_memlock).sum(),
        }
    }

    /// `ours` with the maps its programs use added (programs or maps gone since are skipped).
    pub fn complete(&self, ours: &Ours) -> Ours {
        let programs: BTreeSet<u32> = ours
            .programs
            .iter()
            .copied()
            .filter(|id| self.programs.contains_key(id))
            .collect();
        let maps = programs
            .iter()
            .flat_map(|id| self.programs[id].map_ids.iter().copied())
            .chain(ours.maps.iter().copied())
            .filter(|id| self.maps.contains_key(id))
            .collect();
        Ours { programs, maps }
    }

    pub fn footprint(&self, ours: &Ours) -> Footprint {
        let ours = self.complete(ours);
        Footprint {
            programs: ours.programs.len() as u32,
            maps: ours.maps.len() as u32,
            program_bytes: ours
                .programs
                .iter()
                .map(|id| self.programs[id].bytes_memlock)
                .sum(),
            map_bytes: ours.maps.iter().map(|id| self.maps[id].bytes_memlock).sum(),
        }
    }

    /// Run statistics of `programs`, summed by program name (sorted by name).
    pub fn runs(&self, programs: &BTreeSet<u32>) -> Vec<ProgramRuns> {
        let mut by_name: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for p in programs.iter().filter_map(|id| self.programs.get(id)) {
            let e = by_name.entry(p.name.as_str()).or_default();
            e.0 += p.run_cnt;
            e.1 += p.run_time_ns;
        }
        by_name
            .into_iter()
            .map(|(name, (run_count, run_time_ns))| ProgramRuns {
                name: name.to_owned(),
                run_count,
                run_time_ns,
            })
            .collect()
    }
}

/// `after − before` of each program's statistics (a program missing before counts from 0).
pub fn runs_since(after: &[ProgramRuns], before: &[ProgramRuns]) -> Vec<ProgramRuns> {
    after
        .iter()
        .map(|p| {
            let b = before.iter().find(|b| b.name == p.name);
            ProgramRuns {
                name: p.name.clone(),
                run_count: p.run_count.saturating_sub(b.map_or(0, |b| b.run_count)),
                run_time_ns: p.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns)),
            }
        })
        .collect()
}

/// The programs attached to the cgroups at and under `cgroup_root` (direct attachments, not
/// those inherited from above), and by links to the network namespaces with these inode
/// numbers (sk_lookup).
pub fn attached(cgroup_root: &Path, netns_inodes: &BTreeSet<u64>) -> Result<BTreeSet<u32>> {
    let tree = bpftool(&["cgroup", "tree", &cgroup_root.display().to_string()])?;
    let mut ids = parse_cgroup_tree(&tree)?;
    if !netns_inodes.is_empty() {
        let links = bpftool(&["link", "show"])?;
        ids.extend(parse_netns_links(&links, netns_inodes)?);
    }
    Ok(ids)
}

/// The programs and maps a process holds open (its /proc/PID/fdinfo: `prog_id:` of program
/// and link descriptors, `map_id:` of map descriptors).
pub fn held_by(pid: u32) -> Result<Ours> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ours = Ours::default();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // A descriptor closed since the listing has no fdinfo any more.
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let found = parse_fdinfo(&text);
        ours.programs.extend(found.programs);
        ours.maps.extend(found.maps);
    }
    Ok(ours)
}

fn parse_fdinfo(text: &str) -> Ours {
    let mut ours = Ours::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let Ok(id) = value.trim().parse::<u32>() else {
            continue;
        };
        match key.trim() {
            "prog_id" => {
                ours.programs.insert(id);
            }
            "map_id" => {
                ours.maps.insert(id);
            }
            _ => {}
        }
    }
    ours
}

fn bpftool(args: &[&str]) -> Result<String> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running bpftool (Debian package bpftool)")?;
    if !out.status.success() {
        bail!(
            "`bpftool -j {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// bpftool prints nothing at all (not `[]`) for an empty list in some versions.
fn parse_list<T: for<'de> Deserialize<'de>>(json: &str, what: &str) -> Result<Vec<T>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(json).with_context(|| format!("bpftool -j {what}"))
}

/// `bpftool -j cgroup tree`: `[{"cgroup": PATH, "programs": [{"id": N, ...}]}]`.
fn parse_cgroup_tree(json: &str) -> Result<BTreeSet<u32>> {
    #[derive(Deserialize)]
    struct Attached {
        id: u32,
    }
    #[derive(Deserialize)]
    struct Cgroup {
        #[serde(default)]
        programs: Vec<Attached>,
    }
    let cgroups: Vec<Cgroup> = parse_list(json, "cgroup tree")?;
    Ok(cgroups
        .iter()
        .flat_map(|c| c.programs.iter().map(|p| p.id))
        .collect())
}

/// `bpftool -j link show`: the programs of links to the given network namespaces.
fn parse_netns_links(json: &str, inodes: &BTreeSet<u64>) -> Result<BTreeSet<u32>> {
    #[derive(Deserialize)]
    struct Link {
        prog_id: u32,
        #[serde(default)]
        netns_ino: Option<u64>,
    }
    let links: Vec<Link> = parse_list(json, "link show")?;
    Ok(links
        .iter()
        .filter(|l| l.netns_ino.is_some_and(|ino| inodes.contains(&ino)))
        .map(|l| l.prog_id)
        .collect())
}

/// The kernel's BPF run statistics (`kernel.bpf_stats_enabled`), on while this lives.
///
/// Turned on with `BPF_ENABLE_STATS`, the descriptor-scoped form of the same switch: the
/// kernel turns it off when the descriptor closes, even if the bench is killed, and the sysctl
/// itself (whatever someone else set it to) is never written, so there is nothing to restore.
pub struct BpfStats(#[allow(dead_code)] OwnedFd);

impl BpfStats {
    pub fn enable() -> Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        // union bpf_attr's enable_stats member: { __u32 type; }.
        let attr: u32 = BPF_STATS_RUN_TIME;
        // SAFETY: the kernel reads size_of::<u32>() bytes from a live u32.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &raw const attr,
                std::mem::size_of::<u32>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
        }
        // SAFETY: a new descriptor the kernel just returned, owned by nothing else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let programs: Vec<Program> = serde_json::from_str(
            r#"[{"id":10,"type":"cgroup_sock_addr","name":"redirect_connect4","bytes_memlock":4096,
                 "map_ids":[1,2],"run_time_ns":900,"run_cnt":3},
                {"id":11,"type":"sk_lookup","name":"steer_inbound","bytes_memlock":4096,"map_ids":[2,3]},
                {"id":12,"type":"sock_ops","name":"redirect_connect4","bytes_memlock":8192,"map_ids":[],
                 "run_time_ns":100,"run_cnt":1},
                {"id":99,"type":"kprobe","name":"someone_else","bytes_memlock":4096,"map_ids":[9]}]"#,
        )
        .unwrap();
        let maps: Vec<Map> = serde_json::from_str(
            r#"[{"id":1,"type":"hash","bytes_memlock":1000},{"id":2,"bytes_memlock":20000},
                {"id":3,"bytes_memlock":300},{"id":4,"bytes_memlock":5,
                 "pinned":["/run/bench-bpffs/interceptor/x/RECORDS"]},
                {"id":9,"bytes_memlock":7,"pinned":["/sys/fs/bpf/other/M"]}]"#,
        )
        .unwrap();
        Snapshot {
            programs: programs.into_iter().map(|p| (p.id, p)).collect(),
            maps: maps.into_iter().map(|m| (m.id, m)).collect(),
        }
    }

    #[test]
    fn counts_our_programs_their_maps_and_held_maps_once() {
        let s = snapshot();
        let ours = Ours {
            programs: [10, 11, 55].into(),
            maps: [4, 2, 77].into(),
        };
        // 55 and 77 are gone; map 2 is used by both programs and held: counted once.
        assert_eq!(
            s.footprint(&ours),
            Footprint {
                programs: 2,
                maps: 4,
                program_bytes: 8192,
                map_bytes: 1000 + 20000 + 300 + 5,
            }
        );
        let all = s.machine();
        assert_eq!((all.programs, all.maps), (4, 5));
        assert_eq!(all.bytes(), 20480 + 21312);
        // A map only user space uses, pinned in our bpffs, is ours; one pinned elsewhere is not.
        let pinned = s.pinned_under(Path::new("/run/bench-bpffs"));
        assert_eq!(
            (pinned.programs, pinned.maps),
            (BTreeSet::new(), [4].into())
        );
    }

    #[test]
    fn sums_run_statistics_by_name_and_subtracts_what_ran_before() {
        let s = snapshot();
        let runs = s.runs(&[10, 11, 12].into());
        assert_eq!(
            runs,
            vec![
                ProgramRuns {
                    name: "redirect_connect4".into(),
                    run_count: 4,
                    run_time_ns: 1000
                },
                ProgramRuns {
                    name: "steer_inbound".into(),
                    run_count: 0,
                    run_time_ns: 0
                },
            ]
        );
        let before = vec![ProgramRuns {
            name: "redirect_connect4".into(),
            run_count: 1,
            run_time_ns: 400,
        }];
        let since = runs_since(&runs, &before);
        assert_eq!((since[0].run_count, since[0].run_time_ns), (3, 600));
        assert_eq!((since[1].run_count, since[1].run_time_ns), (0, 0));
    }

    #[test]
    fn finds_attachments_and_held_descriptors() {
        let tree = r#"[{"cgroup":"/sys/fs/cgroup/unified/x","programs":[]},
            {"cgroup":"/sys/fs/cgroup/unified/x/pod","programs":[
              {"id":10,"attach_type":"cgroup_inet4_connect","attach_flags":"multi","name":"redirect_connect4"},
              {"id":12,"attach_type":"sock_ops","attach_flags":"","name":"track"}]}]"#;
        assert_eq!(parse_cgroup_tree(tree).unwrap(), [10, 12].into());
        assert_eq!(parse_cgroup_tree("").unwrap(), BTreeSet::new());
        let links = r#"[{"id":1,"type":"netns","prog_id":11,"netns_ino":4026532500,"attach_type":"sk_lookup"},
            {"id":2,"type":"netns","prog_id":31,"netns_ino":4026530000,"attach_type":"sk_lookup"},
            {"id":3,"type":"cgroup","prog_id":10,"cgroup_id":77,"attach_type":"cgroup_inet4_connect"}]"#;
        assert_eq!(
            parse_netns_links(links, &[4026532500].into()).unwrap(),
            [11].into()
        );
        let prog_fd = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nlink_type:\tcgroup\nlink_id:\t3\nprog_tag:\tab\nprog_id:\t10\n";
        let map_fd =
            "pos:\t0\nflags:\t02000002\nmap_type:\t1\nkey_size:\t4\nmap_id:\t2\nmemlock:\t4096\n";
        let both = [parse_fdinfo(prog_fd), parse_fdinfo(map_fd)];
        assert_eq!(both[0].programs, [10].into());
        assert_eq!(both[1].maps, [2].into());
        assert!(parse_fdinfo("pos:\t0\nflags:\t02\n").programs.is_empty());
    }
}
