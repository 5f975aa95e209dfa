//! A small DNS message codec (RFC 1035, RFC 3596 for AAAA) for Petty's
//! filtering resolver, which sits between a sandboxed guest and the host's
//! upstream resolver.
//!
//! - [`parse_query`]: the one question of a guest's query, so the policy can
//!   judge its name.
//! - [`answer_with_rcode`]: a reply to a query that carries no records, only
//!   a response code (`REFUSED` for a denied name, `SERVFAIL` when upstream
//!   failed, …).
//! - [`parse_response`]: the addresses (with TTLs) and CNAME targets in an
//!   upstream response's answer section, so connections can be checked
//!   against the names the resolver gave out.
//! - [`tcp_frame`] and [`tcp_split`]: DNS over TCP's two-byte length prefix.
//! - [`build_query`] and [`build_response`]: small builders, for tests.
//!
//! Every input is untrusted: parsing is bounds-checked throughout and never
//! panics. A compression pointer must point strictly before the data it was
//! reached from (as a compressor's pointers to earlier names do), so pointer
//! loops are impossible, and a name may follow at most [`MAX_POINTERS`]
//! of them, so hostile chains stay cheap.
//!
//! Names come out as text the policy can match: lowercase, labels joined by
//! `.`, no final dot, `""` for the root. A label must be printable ASCII
//! other than `.` (and space): a label with a dot inside, or bytes text
//! cannot show, would read as a different name from the one upstream
//! resolves, so such names are refused rather than approximated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Record type A: an IPv4 address.
pub const TYPE_A: u16 = 1;
/// Record type AAAA: an IPv6 address (RFC 3596).
pub const TYPE_AAAA: u16 = 28;
/// Record type CNAME: the canonical name for an alias.
pub const TYPE_CNAME: u16 = 5;
/// Record type SRV: where a service runs (RFC 2782).
pub const TYPE_SRV: u16 = 33;
/// Class IN, the internet.
pub const CLASS_IN: u16 = 1;

/// The most compression pointers one name may follow. A name has at most
/// 127 labels and a compressor points only at whole suffixes, so a real
/// name needs no more than one pointer per label.
pub const MAX_POINTERS: usize = 128;

/// The most bytes a name takes on the wire, its final root label included
/// (RFC 1035 §2.3.4); 253 characters as text.
const MAX_NAME_WIRE: usize = 255;

/// The most bytes a label may have (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;

const HEADER_LEN: usize = 12;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;

/// A response code, the header's low four bits: the ones Petty's resolver
/// sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Rcode {
    /// No error.
    NoError = 0,
    /// The server failed (upstream could not be reached, or answered
    /// nonsense).
    ServFail = 2,
    /// The name does not exist.
    NxDomain = 3,
    /// The server will not answer (the policy denies the name).
    Refused = 5,
}

impl Rcode {
    /// The code as the header carries it.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Rcode> for u8 {
    fn from(rcode: Rcode) -> u8 {
        rcode.code()
    }
}

impl TryFrom<u8> for Rcode {
    /// A code this enum does not name, given back.
    type Error = u8;

    fn try_from(code: u8) -> Result<Self, u8> {
        match code {
            0 => Ok(Self::NoError),
            2 => Ok(Self::ServFail),
            3 => Ok(Self::NxDomain),
            5 => Ok(Self::Refused),
            other => Err(other),
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The message ends before what its header or a length promised.
    #[error("DNS message truncated")]
    Truncated,
    /// [`parse_query`] got a response (QR set).
    #[error("DNS message is a response, not a query")]
    NotQuery,
    /// [`parse_response`] got a query (QR clear).
    #[error("DNS message is a query, not a response")]
    NotResponse,
    /// An opcode other than QUERY (0).
    #[error("DNS opcode {0} is not QUERY")]
    Opcode(u8),
    /// Not exactly one question.
    #[error("DNS message has {0} questions, not one")]
    QuestionCount(u16),
    /// A label length over 63 that is not a compression pointer (the
    /// length bytes 0x40 to 0xBF: reserved or obsolete label types).
    #[error("DNS label longer than 63 bytes")]
    LabelTooLong,
    /// A name over 255 bytes on the wire.
    #[error("DNS name longer than 255 bytes")]
    NameTooLong,
    /// A compression pointer that does not point strictly before where it
    /// was reached from (so could loop), or one too many for a name.
    #[error("bad DNS compression pointer")]
    BadPointer,
    /// A label byte that is not printable ASCII, or a `.` or space.
    #[error("DNS label has byte {0:#04x}")]
    BadChar(u8),
    /// An A, AAAA or CNAME record whose data is not one address or one name.
    #[error("DNS record of type {rtype} has malformed data")]
    BadRdata {
        /// The record's type.
        rtype: u16,
    },
}

/// A guest's query: its id and its one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The message id, echoed in the answer.
    pub id: u16,
    /// The name asked about: lowercase, no final dot, `""` for the root.
    pub name: String,
    /// The type asked for ([`TYPE_A`], [`TYPE_AAAA`], …).
    pub qtype: u16,
    /// The class asked in ([`CLASS_IN`], in practice).
    pub qclass: u16,
}

/// What an upstream response says, as far as the resolver needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The message id.
    pub id: u16,
    /// The header's response code (compare with [`Rcode::code`]); an EDNS
    /// extended code is not folded in.
    pub rcode: u8,
    /// The question's name: lowercase, no final dot, `""` for the root.
    pub name: String,
    /// Every class-IN A and AAAA record in the answer section, in order,
    /// with its TTL in seconds (a TTL with its top bit set counts as 0, as
    /// RFC 2181 §8 says). Owners are not checked against the question or
    /// the CNAME chain.
    pub addrs: Vec<(IpAddr, u32)>,
    /// Every class-IN CNAME target in the answer section, in order,
    /// lowercase, no final dot.
    pub cnames: Vec<String>,
    /// Every class-IN SRV record in the answer section, in order.
    pub srvs: Vec<Srv>,
    /// The TC bit: the answer did not fit (ask again over TCP). The answer
    /// section may then end early: the records that fit are returned.
    pub truncated: bool,
}

/// The header's fields.
struct Header {
    id: u16,
    flags: u16,
    qdcount: u16,
    ancount: u16,
    nscount: u16,
    arcount: u16,
}

impl Header {
    fn parse(msg: &[u8]) -> Result<Self, DnsError> {
        Ok(Self {
            id: be16(msg, 0)?,
            flags: be16(msg, 2)?,
            qdcount: be16(msg, 4)?,
            ancount: be16(msg, 6)?,
            nscount: be16(msg, 8)?,
            arcount: be16(msg, 10)?,
        })
    }

    fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xF) as u8
    }
}

fn be16(msg: &[u8], at: usize) -> Result<u16, DnsError> {
    match msg.get(at..at.wrapping_add(2)) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(DnsError::Truncated),
    }
}

fn be32(msg: &[u8], at: usize) -> Result<u32, DnsError> {
    Ok(u32::from(be16(msg, at)?) << 16 | u32::from(be16(msg, at + 2)?))
}

/// Walks the name at `start`, following compression pointers, handing each
/// label to `on_label`; returns where the name ends in the message (after
/// its root label, or after its first pointer).
fn walk_name(
    msg: &[u8],
    start: usize,
    mut on_label: impl FnMut(&[u8]) -> Result<(), DnsError>,
) -> Result<usize, DnsError> {
    let mut pos = start;
    // A pointer must point below this: the start of the run of labels it
    // ends. Each jump lowers it, so no walk can come back round.
    let mut limit = start;
    let mut end = None;
    let mut wire_len = 1; // the root label
    let mut pointers = 0;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Ok(end.unwrap_or(pos + 1)),
            0x00 => {
                let len = usize::from(len);
                wire_len += len + 1;
                if wire_len > MAX_NAME_WIRE {
                    return Err(DnsError::NameTooLong);
                }
                let label = msg.get(pos + 1..pos + 1 + len).ok_or(DnsError::Truncated)?;
                on_label(label)?;
                pos += 1 + len;
            }
            0xC0 => {
                let low = *msg.get(pos + 1).ok_or(DnsError::Truncated)?;
                let target = usize::from(len & 0x3F) << 8 | usize::from(low);
                pointers += 1;
                if target >= limit || pointers > MAX_POINTERS {
                    return Err(DnsError::BadPointer);
                }
                end.get_or_insert(pos + 2);
                limit = target;
                pos = target;
            }
            _ => return Err(DnsError::LabelTooLong),
        }
    }
}

/// Reads the name at `start` as text; returns it and where it ends.
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let end = walk_name(msg, start, |label| {
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            if !b.is_ascii_graphic() || b == b'.' {
                return Err(DnsError::BadChar(b));
            }
            name.push(char::from(b.to_ascii_lowercase()));
        }
        Ok(())
    })?;
    Ok((name, end))
}

/// Checks the name at `start` is well formed, whatever its bytes; returns
/// where it ends.
fn skip_name(msg: &[u8], start: usize) -> Result<usize, DnsError> {
    walk_name(msg, start, |_| Ok(()))
}

/// A resource record's fixed fields, and where its data lies.
struct Record {
    rtype: u16,
    class: u16,
    ttl: u32,
    data: usize,
    end: usize,
}

/// Reads the record at `pos`, checking its owner name and that its data
/// fits.
fn read_record(msg: &[u8], pos: usize) -> Result<Record, DnsError> {
    let pos = skip_name(msg, pos)?;
    let rtype = be16(msg, pos)?;
    let class = be16(msg, pos + 2)?;
    let ttl = be32(msg, pos + 4)?;
    let rdlength = usize::from(be16(msg, pos + 8)?);
    let data = pos + 10;
    let end = data + rdlength;
    if end > msg.len() {
        return Err(DnsError::Truncated);
    }
    Ok(Record {
        rtype,
        class,
        ttl,
        data,
        end,
    })
}

/// Reads the one question after the header: its name, type, class, and
/// where the question section ends.
fn read_question(msg: &[u8]) -> Result<(String, u16, u16, usize), DnsError> {
    let (name, pos) = read_name(msg, HEADER_LEN)?;
    let qtype = be16(msg, pos)?;
    let qclass = be16(msg, pos + 2)?;
    Ok((name, qtype, qclass, pos + 4))
}

/// Parses a query and, on success, also gives where its question ends.
fn parse_query_at(msg: &[u8]) -> Result<(Query, usize), DnsError> {
    let header = Header::parse(msg)?;
    if header.flags & FLAG_QR != 0 {
        return Err(DnsError::NotQuery);
    }
    if header.opcode() != 0 {
        return Err(DnsError::Opcode(header.opcode()));
    }
    if header.qdcount != 1 {
        return Err(DnsError::QuestionCount(header.qdcount));
    }
    let (name, qtype, qclass, question_end) = read_question(msg)?;
    // Whatever else the query carries (an EDNS OPT record, in practice) is
    // ignored, but must be well formed.
    let records =
        usize::from(header.ancount) + usize::from(header.nscount) + usize::from(header.arcount);
    let mut pos = question_end;
    for _ in 0..records {
        pos = read_record(msg, pos)?.end;
    }
    let query = Query {
        id: header.id,
        name,
        qtype,
        qclass,
    };
    Ok((query, question_end))
}

/// Parses a guest's query: QR clear, opcode QUERY, exactly one question.
/// Records after the question (an EDNS OPT record, in practice) are
/// checked for shape and otherwise ignored; bytes after the last are
/// ignored.
pub fn parse_query(msg: &[u8]) -> Result<Query, DnsError> {
    parse_query_at(msg).map(|(query, _)| query)
}

/// A reply to `query_msg` (which must parse as [`parse_query`] parses)
/// with no records, only `rcode`: the same id, QR set, opcode QUERY, RD
/// copied, RA set, every other flag clear, and the question section echoed
/// byte for byte (its name's case included). An EDNS OPT record in the
/// query is not echoed.
pub fn answer_with_rcode(query_msg: &[u8], rcode: Rcode) -> Result<Vec<u8>, DnsError> {
    let (query, question_end) = parse_query_at(query_msg)?;
    let flags = response_flags(query_msg) | u16::from(rcode.code());
    let mut out = Vec::with_capacity(question_end);
    out.extend_from_slice(&query.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&query_msg[HEADER_LEN..question_end]);
    Ok(out)
}

/// QR and RA set, RD copied from the query, everything else clear.
fn response_flags(query_msg: &[u8]) -> u16 {
    let query_flags = be16(query_msg, 2).unwrap_or(0);
    FLAG_QR | FLAG_RA | (query_flags & FLAG_RD)
}

/// Parses an upstream response: QR set, exactly one question. Walks the
/// question and answer sections (following compression pointers) and
/// collects the answer's class-IN A and AAAA addresses with their TTLs and
/// its class-IN CNAME targets; other records are skipped, and the
/// authority and additional sections are not read.
///
/// With TC clear, a message that ends early is an error. With TC set, an
/// answer section that ends early yields the records that fit.
pub fn parse_response(msg: &[u8]) -> Result<Response, DnsError> {
    let header = Header::parse(msg)?;
    if header.flags & FLAG_QR == 0 {
        return Err(DnsError::NotResponse);
    }
    if header.qdcount != 1 {
        return Err(DnsError::QuestionCount(header.qdcount));
    }
    let truncated = header.flags & FLAG_TC != 0;
    let (name, _, _, mut pos) = read_question(msg)?;
    let mut addrs = Vec::new();
    let mut cnames = Vec::new();
    let mut srvs = Vec::new();
    for _ in 0..header.ancount {
        let record = match read_record(msg, pos) {
            Ok(record) => record,
            Err(DnsError::Truncated) if truncated => break,
            Err(e) => return Err(e),
        };
        pos = record.end;
        if record.class != CLASS_IN {
            continue;
        }
        let data = &msg[record.data..record.end];
        let ttl = if record.ttl & 0x8000_0000 != 0 {
            0
        } else {
            record.ttl
        };
        let bad = DnsError::BadRdata {
            rtype: record.rtype,
        };
        match record.rtype {
            TYPE_A => {
                let octets: [u8; 4] = data.try_into().map_err(|_| bad)?;
                addrs.push((IpAddr::V4(Ipv4Addr::from(octets)), ttl));
            }
            TYPE_AAAA => {
                let octets: [u8; 16] = data.try_into().map_err(|_| bad)?;
                addrs.push((IpAddr::V6(Ipv6Addr::from(octets)), ttl));
            }
            TYPE_CNAME => {
                let (target, end) = read_name(msg, record.data)?;
                if end != record.end {
                    return Err(bad);
                }
                cnames.push(target);
            }
            TYPE_SRV => {
                let field = |at: usize| be16(msg, record.data + at).map_err(|_| bad.clone());
                if data.len() < 7 {
                    return Err(bad);
                }
                let (priority, weight, port) = (field(0)?, field(2)?, field(4)?);
                let (target, end) = read_name(msg, record.data + 6)?;
                if end != record.end {
                    return Err(bad);
                }
                srvs.push(Srv {
                    priority,
                    weight,
                    port,
                    target,
                });
            }
            _ => {}
        }
    }
    Ok(Response {
        id: header.id,
        rcode: (header.flags & 0xF) as u8,
        name,
        addrs,
        cnames,
        srvs,
        truncated,
    })
}

/// An SRV record's data (RFC 2782): where one instance of a service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is tried first.
    pub priority: u16,
    /// Among equal priorities, the share of the load.
    pub weight: u16,
    pub port: u16,
    /// The host, lowercase, no final dot.
    pub target: String,
}

/// For DNS over TCP: `msg` prefixed with its length, two bytes big-endian
/// (RFC 1035 §4.2.2).
///
/// # Panics
///
/// If `msg` is over 65,535 bytes, which no DNS message is (a UDP datagram
/// cannot be, and one read with [`tcp_split`] was not).
pub fn tcp_frame(msg: &[u8]) -> Vec<u8> {
    let len = u16::try_from(msg.len()).expect("a DNS message is at most 65,535 bytes");
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// For DNS over TCP: splits the first length-prefixed message off `buf`,
/// giving the message and the rest; `None` while `buf` holds less than a
/// whole one.
pub fn tcp_split(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = usize::from(be16(buf, 0).ok()?);
    let msg = buf.get(2..2 + len)?;
    Some((msg, &buf[2 + len..]))
}

/// The data of one record for [`build_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    /// An A record.
    A(Ipv4Addr),
    /// An AAAA record.
    Aaaa(Ipv6Addr),
    /// A CNAME record, with its target.
    Cname(String),
    /// An SRV record.
    Srv(Srv),
}

/// Appends `name` in wire form, uncompressed, its case kept; a final dot is
/// optional, and `""` or `"."` is the root.
///
/// # Panics
///
/// If a label is empty or over 63 bytes, or the name over 255 bytes on the
/// wire.
fn put_name(out: &mut Vec<u8>, name: &str) {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut wire_len = 1;
    if !name.is_empty() {
        for label in name.split('.') {
            assert!(
                (1..=MAX_LABEL).contains(&label.len()),
                "label {label:?} in {name:?} is not 1 to 63 bytes"
            );
            wire_len += 1 + label.len();
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    assert!(
        wire_len <= MAX_NAME_WIRE,
        "{name:?} is over 255 bytes on the wire"
    );
    out.push(0);
}

/// A query with RD set, one class-IN question for `name` (a
/// final dot optional, case kept), no other records.
///
/// # Panics
///
/// If `name` has an empty label or one over 63 bytes, or is over 253
/// characters.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&FLAG_RD.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    put_name(&mut out, name);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// For tests: a NOERROR response to `query` with `answers` (owner, data,
/// TTL) as class-IN records, names uncompressed: the query's id and
/// question, QR and RA set, RD copied.
///
/// # Panics
///
/// If `query` does not parse as [`parse_query`] parses, a name is not one
/// [`build_query`] takes, or there are over 65,535 answers.
pub fn build_response(query: &[u8], answers: &[(&str, RecordData, u32)]) -> Vec<u8> {
    let (parsed, question_end) = parse_query_at(query).expect("build_response needs a query");
    let ancount = u16::try_from(answers.len()).expect("at most 65,535 answers");
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&parsed.id.to_be_bytes());
    out.extend_from_slice(&response_flags(query).to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&ancount.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[HEADER_LEN..question_end]);
    for (owner, data, ttl) in answers {
        put_name(&mut out, owner);
        let rtype = match data {
            RecordData::A(_) => TYPE_A,
            RecordData::Aaaa(_) => TYPE_AAAA,
            RecordData::Cname(_) => TYPE_CNAME,
            RecordData::Srv(_) => TYPE_SRV,
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        let mut rdata = Vec::new();
        match data {
            RecordData::A(ip) => rdata.extend_from_slice(&ip.octets()),
            RecordData::Aaaa(ip) => rdata.extend_from_slice(&ip.octets()),
            RecordData::Cname(target) => put_name(&mut rdata, target),
            RecordData::Srv(srv) => {
                for n in [srv.priority, srv.weight, srv.port] {
                    rdata.extend_from_slice(&n.to_be_bytes());
                }
                put_name(&mut rdata, &srv.target);
            }
        }
        // A name is at most 255 bytes, an address 16.
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    out
}

#[cfg(test)]
mod tests;
