//! The name a connection's first bytes ask for: a TLS ClientHello's server
//! name (SNI), or an HTTP request's `Host`. In `allow` mode a connection
//! that a name rule let through on port 443 or 80 must ask for a name the
//! rules allow, so an address shared by many sites (a CDN's) reaches only
//! the allowed ones.

/// What the first bytes say, so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Asked {
    /// This name (lowercase, no port, no trailing dot).
    Name(String),
    /// Not enough bytes yet to tell.
    More,
    /// A TLS ClientHello without a server name, an HTTP request without a
    /// `Host`, or neither TLS nor HTTP.
    Nothing,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The server name of a TLS ClientHello (the first record's).
pub(crate) fn tls_server_name(b: &[u8]) -> Asked {
    // Record: type 22 (handshake), version, length.
    if b.len() < 5 {
        return Asked::More;
    }
    if b[0] != 22 {
        return Asked::Nothing;
    }
    let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
    if b.len() < 5 + len {
        return Asked::More;
    }
    let h = &b[5..5 + len];
    // Handshake: type 1 (ClientHello), 3-byte length, then the body.
    if h.len() < 4 || h[0] != 1 {
        return Asked::Nothing;
    }
    let body = &h[4..];
    client_hello_sni(body).map_or(Asked::Nothing, Asked::Name)
}

fn client_hello_sni(body: &[u8]) -> Option<String> {
    let mut r = Reader(body);
    r.skip(2 + 32)?; // version, random
    let sid = r.u8()?;
    r.skip(usize::from(sid))?;
    let suites = r.u16()?;
    r.skip(usize::from(suites))?;
    let comp = r.u8()?;
    r.skip(usize::from(comp))?;
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let data = exts.take(len)?;
        if kind == 0 {
            // server_name: list length, then (type 0 = host_name, length, name).
            let mut list = Reader(data);
            let _ = list.u16()?;
            while !list.0.is_empty() {
                let ty = list.u8()?;
                let n = usize::from(list.u16()?);
                let name = list.take(n)?;
                if ty == 0 {
                    let name = std::str::from_utf8(name).ok()?;
                    return Some(normalize(name));
                }
            }
        }
    }
    None
}

/// The `Host` of an HTTP/1 request's head.
pub(crate) fn http_host(b: &[u8]) -> Asked {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        // A head longer than this is not one to let through.
        return if b.len() < 8192 {
            Asked::More
        } else {
            Asked::Nothing
        };
    };
    let Ok(head) = std::str::from_utf8(&b[..end]) else {
        return Asked::Nothing;
    };
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or("");
    if !request.ends_with("HTTP/1.1") && !request.ends_with("HTTP/1.0") {
        return Asked::Nothing;
    }
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("host") {
                let v = v.trim();
                // host, host:port, [v6]:port
                let host = match v.strip_prefix('[') {
                    Some(rest) => rest.split(']').next().unwrap_or(""),
                    None => v.rsplit_once(':').map_or(v, |(h, _)| h),
                };
                return Asked::Name(normalize(host));
            }
        }
    }
    Asked::Nothing
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record naming `sni` (or none).
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        // An extension before SNI: supported_versions.
        exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if let Some(name) = sni {
            let n = name.len() as u16;
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&(n + 5).to_be_bytes());
            exts.extend_from_slice(&(n + 3).to_be_bytes());
            exts.push(0);
            exts.extend_from_slice(&n.to_be_bytes());
            exts.extend_from_slice(name.as_bytes());
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn a_client_hellos_server_name_is_read_and_partial_records_ask_for_more() {
        let rec = client_hello(Some("Files.Example.COM"));
        assert_eq!(
            tls_server_name(&rec),
            Asked::Name("files.example.com".into())
        );
        for cut in 0..rec.len() {
            assert_eq!(tls_server_name(&rec[..cut]), Asked::More, "{cut}");
        }
        assert_eq!(tls_server_name(&client_hello(None)), Asked::Nothing);
        assert_eq!(tls_server_name(b"GET / HTTP/1.1\r\n"), Asked::Nothing);
        // Garbage inside a complete record is not a name.
        let mut bad = rec.clone();
        bad[9 + 34] = 0xff; // session id length past the end
        assert_eq!(tls_server_name(&bad), Asked::Nothing);
    }

    #[test]
    fn an_http_requests_host_is_read_without_its_port() {
        let req = b"GET /simple/ HTTP/1.1\r\nUser-Agent: x\r\nhost: Example.com:8080\r\n\r\n";
        assert_eq!(http_host(req), Asked::Name("example.com".into()));
        assert_eq!(http_host(&req[..20]), Asked::More);
        assert_eq!(
            http_host(b"GET / HTTP/1.0\r\nHost: [2001:db8::1]:80\r\n\r\n"),
            Asked::Name("2001:db8::1".into())
        );
        assert_eq!(http_host(b"GET / HTTP/1.1\r\nX: y\r\n\r\n"), Asked::Nothing);
        assert_eq!(http_host(b"SSH-2.0-x\r\n\r\n"), Asked::Nothing);
    }
}
