//! Just enough of the DNS wire format (RFC 1035) for the DNS-capture tests: an A query, and an
//! answer with A records.

use std::net::Ipv4Addr;

use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// A query for the A records of `name` with id `id`, recursion desired.
pub fn a_query(id: u16, name: &str) -> Result<Vec<u8>> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00]); // RD
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    for label in name.trim_end_matches('.').split('.') {
        ensure!(
            !label.is_empty() && label.len() < 64,
            "bad label in {name:?}"
        );
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&TYPE_A.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(m)
}

/// A parsed question: the message id, the name (lower case, no trailing dot) and where the
/// question section ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    pub name: String,
    end: usize,
}

pub fn parse_question(m: &[u8]) -> Result<Question> {
    ensure!(m.len() >= 12, "message shorter than a header");
    ensure!(
        u16::from_be_bytes([m[4], m[5]]) == 1,
        "not exactly one question"
    );
    let (name, mut i) = read_name(m, 12)?;
    ensure!(m.len() >= i + 4, "question truncated");
    i += 4;
    Ok(Question {
        id: u16::from_be_bytes([m[0], m[1]]),
        name,
        end: i,
    })
}

/// The answer to `query` with one A record per address (TTL 5 s), as an authority would give it.
pub fn a_answer(query: &[u8], addrs: &[Ipv4Addr]) -> Result<Vec<u8>> {
    let q = parse_question(query)?;
    let mut m = query[..q.end].to_vec();
    m[2] = 0x81; // QR, RD
    m[3] = 0x80; // RA, NOERROR
    m[6..8].copy_from_slice(&(addrs.len() as u16).to_be_bytes());
    m[8..12].fill(0);
    for a in addrs {
        m.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        m.extend_from_slice(&TYPE_A.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m.extend_from_slice(&5u32.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&a.octets());
    }
    Ok(m)
}

/// The A records of an answer to the query with id `id`.
pub fn parse_a_answer(m: &[u8], id: u16) -> Result<Vec<Ipv4Addr>> {
    let q = parse_question(m)?;
    ensure!(q.id == id, "answer id {} for query id {id}", q.id);
    ensure!(m[2] & 0x80 != 0, "not a response");
    let rcode = m[3] & 0x0f;
    ensure!(rcode == 0, "rcode {rcode}");
    let answers = u16::from_be_bytes([m[6], m[7]]);
    let mut i = q.end;
    let mut out = Vec::new();
    for _ in 0..answers {
        let (_, after) = read_name(m, i)?;
        ensure!(m.len() >= after + 10, "answer truncated");
        let rtype = u16::from_be_bytes([m[after], m[after + 1]]);
        let len = usize::from(u16::from_be_bytes([m[after + 8], m[after + 9]]));
        let data = after + 10;
        ensure!(m.len() >= data + len, "answer data truncated");
        if rtype == TYPE_A && len == 4 {
            out.push(Ipv4Addr::new(
                m[data],
                m[data + 1],
                m[data + 2],
                m[data + 3],
            ));
        }
        i = data + len;
    }
    Ok(out)
}

/// Reads a (possibly compressed) name at `i`; returns it and the offset after it.
fn read_name(m: &[u8], mut i: usize) -> Result<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let Some(&len) = m.get(i) else {
            bail!("name runs past the message")
        };
        if len == 0 {
            return Ok((labels.join("."), end.unwrap_or(i + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let Some(&low) = m.get(i + 1) else {
                bail!("pointer truncated")
            };
            end.get_or_insert(i + 2);
            i = usize::from(len & 0x3f) << 8 | usize::from(low);
            continue;
        }
        let label = m
            .get(i + 1..i + 1 + usize::from(len))
            .ok_or_else(|| anyhow::anyhow!("label truncated"))?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        i += 1 + usize::from(len);
    }
    bail!("name with too many labels or a pointer loop")
}

/// What `interceptor-dns-query` prints: one JSON line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsQueryResult {
    /// The address the answer came from, as the socket API reported it (`recvfrom`, or
    /// `getpeername` for a connected socket).
    pub from: Option<String>,
    pub addresses: Vec<Ipv4Addr>,
    pub error: Option<String>,
}

/// What `interceptor-dns-proxy --log` prints per query: one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsProxyLine {
    /// `udp` or `tcp`.
    pub proto: String,
    pub name: String,
    /// `proxy` when it answered itself, `upstream` when it forwarded.
    pub answered_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_answer_round_trip() {
        let q = a_query(0x1234, "Svc.Mesh.Test.").unwrap();
        let parsed = parse_question(&q).unwrap();
        assert_eq!((parsed.id, parsed.name.as_str()), (0x1234, "svc.mesh.test"));
        let a = a_answer(&q, &[Ipv4Addr::new(10, 200, 9, 9)]).unwrap();
        assert_eq!(
            parse_a_answer(&a, 0x1234).unwrap(),
            vec![Ipv4Addr::new(10, 200, 9, 9)]
        );
        assert!(parse_a_answer(&a, 1).is_err(), "id mismatch is an error");
    }
}
