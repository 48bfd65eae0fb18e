//! The name servers of a resolv.conf, read the way glibc's resolver reads them: these are the
//! addresses an application's DNS queries actually go to, hence what DNS capture must match.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::Context as _;

/// glibc's `MAXNS`: later `nameserver` lines are ignored.
pub const MAX_NAMESERVERS: usize = 3;

/// The largest resolv.conf read: real ones are a few hundred bytes; a path naming something
/// endless (`/dev/zero`) must not exhaust the reader's memory.
pub const MAX_SIZE: u64 = 64 * 1024;

/// The `nameserver` addresses of the resolv.conf at `path`, in file order.
///
/// No line, or none usable, gives an empty list (glibc would then query 127.0.0.1; istio-iptables
/// treats it as "no servers"). Only a regular file of at most [`MAX_SIZE`] bytes is read, and
/// opening never blocks (a FIFO is refused, not waited on).
pub fn nameservers(path: &Path) -> anyhow::Result<Vec<IpAddr>> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {shown}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading {shown}"))?;
    anyhow::ensure!(meta.is_file(), "{shown} is not a regular file");
    anyhow::ensure!(
        meta.len() <= MAX_SIZE,
        "{shown} is {} bytes; a resolv.conf of at most {MAX_SIZE} bytes is read",
        meta.len()
    );
    let mut text = Vec::new();
    file.take(MAX_SIZE)
        .read_to_end(&mut text)
        .with_context(|| format!("reading {shown}"))?;
    Ok(parse_nameservers(&String::from_utf8_lossy(&text)))
}

/// [`nameservers`] on the file's text.
pub fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        if servers.len() == MAX_NAMESERVERS {
            break;
        }
        // The keyword starts the line and is followed by a space or a tab; `#`/`;` lines are
        // comments (so is anything else glibc does not know).
        let Some(rest) = line.strip_prefix("nameserver") else {
            continue;
        };
        if !rest.starts_with([' ', '\t']) {
            continue;
        }
        // The address is the first word; whatever follows it is ignored.
        let word = rest
            .trim_start_matches([' ', '\t'])
            .split([' ', '\t'])
            .next()
            .unwrap_or("");
        if let Some(addr) = parse_address(word) {
            servers.push(addr);
        }
    }
    servers
}

/// IPv4 as `inet_aton` takes it (all of the word), else IPv6 with an optional `%scope`.
fn parse_address(word: &str) -> Option<IpAddr> {
    if word.is_empty() {
        return None;
    }
    if let Some(v4) = inet_aton(word) {
        return Some(IpAddr::V4(v4));
    }
    let unscoped = word.split('%').next().unwrap_or("");
    unscoped.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// BSD `inet_aton`: 1 to 4 parts, each decimal, octal (leading `0`) or hex (`0x`); the last
/// part fills the remaining bytes (`127.1` is 127.0.0.1).
fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        values.push(parse_c_number(part)?);
    }
    let (last, leading) = values.split_last()?;
    let mut addr: u32 = 0;
    for (i, v) in leading.iter().enumerate() {
        if *v > 0xff {
            return None;
        }
        addr |= v << (24 - 8 * i);
    }
    let room = 32 - 8 * leading.len() as u32;
    if room < 32 && *last >> room != 0 {
        return None;
    }
    Some(Ipv4Addr::from(addr | last))
}

/// A C integer literal as `strtoul(.., 0)` reads it, without sign or spaces.
fn parse_c_number(s: &str) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() && radix == 16 {
        return Some(0); // "0x" alone is 0 for inet_aton
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn reads_nameserver_lines_in_order() {
        let text = "# generated\nsearch default.svc.cluster.local svc.cluster.local\n\
                    nameserver 10.96.0.10\noptions ndots:5\nnameserver\tfd00::a\n";
        assert_eq!(parse_nameservers(text), ips(&["10.96.0.10", "fd00::a"]));
    }

    #[test]
    fn stops_at_three_servers_like_glibc() {
        let text =
            "nameserver 1.1.1.1\nnameserver 2.2.2.2\nnameserver 3.3.3.3\nnameserver 4.4.4.4\n";
        assert_eq!(
            parse_nameservers(text),
            ips(&["1.1.1.1", "2.2.2.2", "3.3.3.3"])
        );
    }

    #[test]
    fn ignores_comments_indentation_and_bad_addresses() {
        let text = "#nameserver 9.9.9.9\n;nameserver 9.9.9.8\n nameserver 9.9.9.7\n\
                    nameservers 9.9.9.6\nnameserver\nnameserver dns.example\nnameserver 300.1.1.1\n\
                    NAMESERVER 9.9.9.5\nnameserver 127.0.0.53 # systemd-resolved\n";
        assert_eq!(parse_nameservers(text), ips(&["127.0.0.53"]));
        // Bad lines do not count toward the three.
        let text = "nameserver x\nnameserver y\nnameserver z\nnameserver 10.0.0.1\n";
        assert_eq!(parse_nameservers(text), ips(&["10.0.0.1"]));
    }

    #[test]
    fn inet_aton_forms_and_ipv6_scopes() {
        let text = "nameserver 127.1\nnameserver 0x7f.0.0.2\nnameserver fe80::1%eth0\n";
        assert_eq!(
            parse_nameservers(text),
            ips(&["127.0.0.1", "127.0.0.2", "fe80::1"])
        );
        assert_eq!(inet_aton("010.0.0.1"), Some(Ipv4Addr::new(8, 0, 0, 1)));
        assert_eq!(inet_aton("10.65535"), Some(Ipv4Addr::new(10, 0, 255, 255)));
        assert_eq!(inet_aton("10.16777216"), None);
        assert_eq!(inet_aton("1.2.3.4.5"), None);
        assert_eq!(inet_aton("1..2"), None);
        assert_eq!(inet_aton("08.1.1.1"), None);
    }

    #[test]
    fn no_servers_and_missing_file() {
        assert!(parse_nameservers("search local\n").is_empty());
        let err = nameservers(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/resolv.conf"));
    }
}
