use super::*;

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse().unwrap())
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse().unwrap())
}

/// A response to a query for `www.example.com` A, written out byte by
/// byte with compression pointers: a CNAME to `web.example.com`, two A
/// records and an MX for it, and an AAAA for `v6.example.com`.
#[rustfmt::skip]
fn compressed_response() -> Vec<u8> {
    let msg = vec![
        // 0: header: id 0xBEEF, QR RD RA, NOERROR; 1 question, 5 answers.
        0xBE, 0xEF, 0x81, 0x80, 0, 1, 0, 5, 0, 0, 0, 0,
        // 12: www, 16: example, 24: com, 28: root; type A, class IN.
        3, b'w', b'w', b'w',
        7, b'e', b'x', b'a', b'm', b'p', b'l', b'e',
        3, b'c', b'o', b'm',
        0,
        0, 1, 0, 1,
        // 33: CNAME, owner -> 12 (www.example.com), TTL 3600, 6 bytes:
        // 45: "web" then -> 16 (example.com).
        0xC0, 12, 0, 5, 0, 1, 0, 0, 0x0E, 0x10, 0, 6,
        3, b'w', b'e', b'b', 0xC0, 16,
        // 51: A, owner -> 45 (web.example.com), TTL 300, 192.0.2.1.
        0xC0, 45, 0, 1, 0, 1, 0, 0, 0x01, 0x2C, 0, 4, 192, 0, 2, 1,
        // 67: A, owner -> 45, TTL 300, 198.51.100.7.
        0xC0, 45, 0, 1, 0, 1, 0, 0, 0x01, 0x2C, 0, 4, 198, 51, 100, 7,
        // 83: MX, owner -> 45, TTL 300, preference 10, exchange -> 16.
        0xC0, 45, 0, 15, 0, 1, 0, 0, 0x01, 0x2C, 0, 4, 0, 10, 0xC0, 16,
        // 99: AAAA, owner "v6" then -> 16, TTL 60, 2001:db8::1.
        2, b'v', b'6', 0xC0, 16, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16,
        0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ];
    assert_eq!(msg.len(), 130);
    msg
}

fn compressed_response_parsed(truncated: bool) -> Response {
    Response {
        id: 0xBEEF,
        rcode: 0,
        name: "www.example.com".into(),
        addrs: vec![
            (v4("192.0.2.1"), 300),
            (v4("198.51.100.7"), 300),
            (v6("2001:db8::1"), 60),
        ],
        cnames: vec!["web.example.com".into()],
        srvs: vec![],
        truncated,
    }
}

/// A header with the given flags and counts, then `body`.
fn message(flags: u16, counts: [u16; 4], body: &[u8]) -> Vec<u8> {
    let mut msg = vec![0x12, 0x34];
    msg.extend_from_slice(&flags.to_be_bytes());
    for count in counts {
        msg.extend_from_slice(&count.to_be_bytes());
    }
    msg.extend_from_slice(body);
    msg
}

/// A query whose question name is `labels` written raw (no checks), type
/// A, class IN.
fn raw_query(labels: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for label in labels {
        body.push(label.len() as u8);
        body.extend_from_slice(label);
    }
    body.extend_from_slice(&[0, 0, 1, 0, 1]);
    message(FLAG_RD, [1, 0, 0, 0], &body)
}

/// `query` with an EDNS OPT record (UDP size 4096) after its question.
fn with_opt(query: &[u8]) -> Vec<u8> {
    let mut msg = query.to_vec();
    msg[11] = 1; // ARCOUNT
    msg.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    msg
}

#[test]
fn a_built_query_parses_back() {
    for (name, qtype) in [
        ("example.com", TYPE_A),
        ("a.b.example.net", TYPE_AAAA),
        ("x.test", TYPE_CNAME),
        ("_svc._tcp.example.com", 33),
    ] {
        let msg = build_query(0xA1B2, name, qtype);
        assert_eq!(
            parse_query(&msg).unwrap(),
            Query {
                id: 0xA1B2,
                name: name.into(),
                qtype,
                qclass: CLASS_IN,
            }
        );
    }
}

#[test]
fn names_come_out_lowercase_without_a_final_dot() {
    let q = parse_query(&build_query(1, "WWW.Example.COM", TYPE_A)).unwrap();
    assert_eq!(q.name, "www.example.com");
    assert_eq!(
        build_query(1, "example.com.", TYPE_A),
        build_query(1, "example.com", TYPE_A)
    );
    assert_eq!(
        parse_query(&build_query(1, "Example.COM.", TYPE_A))
            .unwrap()
            .name,
        "example.com"
    );
    for root in ["", "."] {
        let msg = build_query(7, root, TYPE_A);
        assert_eq!(&msg[12..], &[0, 0, 1, 0, 1]);
        assert_eq!(parse_query(&msg).unwrap().name, "");
    }
}

#[test]
fn a_query_may_carry_an_edns_opt_record() {
    let msg = with_opt(&build_query(9, "example.com", TYPE_AAAA));
    let q = parse_query(&msg).unwrap();
    assert_eq!(
        (q.id, q.name.as_str(), q.qtype),
        (9, "example.com", TYPE_AAAA)
    );
}

#[test]
fn parse_query_refuses_responses_other_opcodes_and_question_counts() {
    let mut msg = build_query(1, "example.com", TYPE_A);
    msg[2] |= 0x80;
    assert_eq!(parse_query(&msg), Err(DnsError::NotQuery));

    for opcode in [1u8, 2, 4, 5, 15] {
        let mut msg = build_query(1, "example.com", TYPE_A);
        msg[2] |= opcode << 3;
        assert_eq!(parse_query(&msg), Err(DnsError::Opcode(opcode)));
    }

    let question = &build_query(1, "example.com", TYPE_A)[12..];
    let two: Vec<u8> = [question, &build_query(1, "example.net", TYPE_A)[12..]].concat();
    let msg = message(FLAG_RD, [2, 0, 0, 0], &two);
    assert_eq!(parse_query(&msg), Err(DnsError::QuestionCount(2)));
    let msg = message(FLAG_RD, [0, 0, 0, 0], &[]);
    assert_eq!(parse_query(&msg), Err(DnsError::QuestionCount(0)));
}

#[test]
fn labels_over_63_bytes_and_names_over_255_are_refused() {
    let l63 = [b'a'; 63];
    let l64 = [b'a'; 64];
    assert!(parse_query(&raw_query(&[&l63, b"com"])).is_ok());
    assert_eq!(
        parse_query(&raw_query(&[&l64, b"com"])),
        Err(DnsError::LabelTooLong)
    );
    // Every length byte 0x40 to 0xBF is refused, whatever follows.
    for len in 0x40..=0xBFu8 {
        let mut msg = message(FLAG_RD, [1, 0, 0, 0], &[len]);
        msg.extend_from_slice(&[b'a'; 200]);
        assert_eq!(parse_query(&msg), Err(DnsError::LabelTooLong), "{len:#x}");
    }

    // 63 + 63 + 63 + 61 bytes of labels is 255 on the wire, 253 as text.
    let l61 = [b'b'; 61];
    let longest = raw_query(&[&l63, &l63, &l63, &l61]);
    assert_eq!(parse_query(&longest).unwrap().name.len(), 253);
    let l62 = [b'b'; 62];
    assert_eq!(
        parse_query(&raw_query(&[&l63, &l63, &l63, &l62])),
        Err(DnsError::NameTooLong)
    );

    // A name made too long by a pointer to the longest name is refused
    // too: a CNAME to "abc." then the question's name.
    let mut msg = longest.clone();
    msg[2] = 0x81; // QR, RD
    msg[7] = 1; // ANCOUNT
    msg.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6]);
    msg.extend_from_slice(&[3, b'a', b'b', b'c', 0xC0, 12]);
    assert_eq!(parse_response(&msg), Err(DnsError::NameTooLong));
}

#[test]
#[should_panic(expected = "not 1 to 63 bytes")]
fn the_builder_will_not_write_a_long_label() {
    build_query(1, &format!("{}.com", "a".repeat(64)), TYPE_A);
}

#[test]
#[should_panic(expected = "over 255 bytes")]
fn the_builder_will_not_write_a_long_name() {
    let l = "a".repeat(63);
    build_query(1, &format!("{l}.{l}.{l}.{}", "b".repeat(62)), TYPE_A);
}

#[test]
fn labels_with_dots_spaces_or_non_ascii_are_refused() {
    for (label, bad) in [
        (&b"a.b"[..], b'.'),
        (b"a b", b' '),
        (b"caf\xC3\xA9", 0xC3),
        (b"nul\0", 0),
        (b"del\x7F", 0x7F),
    ] {
        assert_eq!(
            parse_query(&raw_query(&[label, b"example", b"com"])),
            Err(DnsError::BadChar(bad)),
            "{label:?}"
        );
    }
}

#[test]
fn a_compressed_response_parses_byte_by_byte() {
    let msg = compressed_response();
    assert_eq!(parse_response(&msg), Ok(compressed_response_parsed(false)));
}

#[test]
fn a_built_response_parses_back() {
    let query = build_query(0x4242, "Www.Example.com", TYPE_A);
    let msg = build_response(
        &query,
        &[
            (
                "www.example.com",
                RecordData::Cname("Edge.Example.NET.".into()),
                120,
            ),
            (
                "edge.example.net",
                RecordData::A("203.0.113.5".parse().unwrap()),
                30,
            ),
            (
                "edge.example.net",
                RecordData::Aaaa("2001:db8::5".parse().unwrap()),
                45,
            ),
            ("edge.example.net", RecordData::Cname("x.test".into()), 0),
        ],
    );
    assert_eq!(
        parse_response(&msg).unwrap(),
        Response {
            id: 0x4242,
            rcode: 0,
            name: "www.example.com".into(),
            addrs: vec![(v4("203.0.113.5"), 30), (v6("2001:db8::5"), 45)],
            cnames: vec!["edge.example.net".into(), "x.test".into()],
            srvs: vec![],
            truncated: false,
        }
    );
    // The question is the query's, byte for byte.
    assert_eq!(&msg[12..query.len()], &query[12..]);
    assert_eq!(&msg[2..4], &[0x81, 0x80]);
}

#[test]
fn parse_response_refuses_queries_and_question_counts() {
    let query = build_query(1, "example.com", TYPE_A);
    assert_eq!(parse_response(&query), Err(DnsError::NotResponse));
    let msg = message(FLAG_QR | 2, [0, 0, 0, 0], &[]);
    assert_eq!(parse_response(&msg), Err(DnsError::QuestionCount(0)));
}

#[test]
fn records_of_other_classes_and_types_are_skipped_and_bad_rdata_refused() {
    let mut msg = compressed_response();
    msg[33 + 5] = 3; // the CNAME's class: CHAOS
    msg[51 + 5] = 3; // the first A's class: CHAOS
    let r = parse_response(&msg).unwrap();
    assert_eq!(r.cnames, Vec::<String>::new());
    assert_eq!(
        r.addrs,
        vec![(v4("198.51.100.7"), 300), (v6("2001:db8::1"), 60)]
    );

    // An A record with 5 bytes of data.
    let mut msg = compressed_response();
    msg.truncate(67);
    msg[7] = 2;
    msg[62] = 5;
    msg.push(9);
    assert_eq!(
        parse_response(&msg),
        Err(DnsError::BadRdata { rtype: TYPE_A })
    );

    // A CNAME whose name stops short of its data's end.
    let mut msg = compressed_response();
    msg.truncate(51);
    msg[7] = 1;
    msg[44] = 7;
    msg.push(0);
    assert_eq!(
        parse_response(&msg),
        Err(DnsError::BadRdata { rtype: TYPE_CNAME })
    );
}

#[test]
fn a_ttl_with_its_top_bit_set_counts_as_zero() {
    let mut msg = compressed_response();
    msg[51 + 6] = 0x80; // the first A's TTL: 0x8000012C
    assert_eq!(parse_response(&msg).unwrap().addrs[0], (v4("192.0.2.1"), 0));
}

#[test]
fn pointer_loops_and_forward_pointers_are_refused() {
    // The question's name points at itself.
    let msg = message(FLAG_RD, [1, 0, 0, 0], &[0xC0, 12, 0, 1, 0, 1]);
    assert_eq!(parse_query(&msg), Err(DnsError::BadPointer));

    // "a", then a pointer back to the name's start.
    let msg = message(FLAG_RD, [1, 0, 0, 0], &[1, b'a', 0xC0, 12, 0, 1, 0, 1]);
    assert_eq!(parse_query(&msg), Err(DnsError::BadPointer));

    // A CNAME's data points to 47, which points back to 45.
    let mut msg = compressed_response();
    msg.truncate(51);
    msg[7] = 1;
    msg[43..51].copy_from_slice(&[0, 6, 0xC0, 47, 0xC0, 45, 0, 0]);
    assert_eq!(parse_response(&msg), Err(DnsError::BadPointer));

    // A pointer past the end of the message.
    let mut msg = compressed_response();
    msg[49] = 0xFF;
    assert_eq!(parse_response(&msg), Err(DnsError::BadPointer));
}

/// A response to `example.com` A whose first answer is a record of an
/// unknown type holding a root label (at 29 + 12 = 41) then `chain`
/// pointers each to the one before, and whose second is a CNAME to the
/// last: a name behind `chain + 1` pointers.
fn pointer_chain(chain: usize) -> Vec<u8> {
    let mut msg = build_response(&build_query(1, "example.com", TYPE_A), &[]);
    msg[7] = 2;
    let base = msg.len() + 12;
    assert_eq!(base, 41);
    msg.extend_from_slice(&[0xC0, 12, 0xFF, 0x00, 0, 1, 0, 0, 0, 1]);
    msg.extend_from_slice(&((1 + 2 * chain) as u16).to_be_bytes());
    msg.push(0);
    for i in 0..chain {
        let target = if i == 0 { base } else { base + 1 + 2 * (i - 1) };
        msg.extend_from_slice(&(0xC000 | target as u16).to_be_bytes());
    }
    let last = base + 1 + 2 * (chain - 1);
    msg.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 1, 0, 2]);
    msg.extend_from_slice(&(0xC000 | last as u16).to_be_bytes());
    msg
}

#[test]
fn a_name_follows_at_most_max_pointers() {
    let ok = parse_response(&pointer_chain(MAX_POINTERS - 1)).unwrap();
    assert_eq!(ok.cnames, vec![String::new()]);
    assert_eq!(
        parse_response(&pointer_chain(MAX_POINTERS)),
        Err(DnsError::BadPointer)
    );
}

#[test]
fn every_prefix_of_a_valid_message_is_an_error() {
    let queries = [
        build_query(3, "www.example.com", TYPE_A),
        with_opt(&build_query(3, "www.example.com", TYPE_A)),
    ];
    for msg in &queries {
        assert!(parse_query(msg).is_ok());
        for len in 0..msg.len() {
            assert!(parse_query(&msg[..len]).is_err(), "query prefix {len}");
            assert!(
                answer_with_rcode(&msg[..len], Rcode::Refused).is_err(),
                "answer prefix {len}"
            );
        }
    }
    let responses = [
        compressed_response(),
        build_response(
            &queries[0],
            &[(
                "www.example.com",
                RecordData::Aaaa("2001:db8::7".parse().unwrap()),
                5,
            )],
        ),
    ];
    for msg in &responses {
        assert!(parse_response(msg).is_ok());
        for len in 0..msg.len() {
            assert_eq!(
                parse_response(&msg[..len]),
                Err(DnsError::Truncated),
                "response prefix {len}"
            );
        }
    }
}

#[test]
fn a_truncated_response_says_so_and_keeps_the_records_that_fit() {
    let mut msg = compressed_response();
    msg[2] |= 0x02; // TC
    assert_eq!(parse_response(&msg), Ok(compressed_response_parsed(true)));

    // Cut after the first A, and inside the second.
    for len in [67, 70, 82] {
        let r = parse_response(&msg[..len]).unwrap();
        assert!(r.truncated);
        assert_eq!(r.cnames, vec!["web.example.com".to_string()]);
        assert_eq!(r.addrs, vec![(v4("192.0.2.1"), 300)]);
    }
    // The question must still be whole.
    assert_eq!(parse_response(&msg[..30]), Err(DnsError::Truncated));
    // And TC is reported whatever the records.
    let mut msg = build_response(&build_query(5, "example.com", TYPE_A), &[]);
    assert!(!parse_response(&msg).unwrap().truncated);
    msg[2] |= 0x02;
    assert!(parse_response(&msg).unwrap().truncated);
}

#[test]
fn answer_with_rcode_echoes_the_question_and_sets_the_flags() {
    for rcode in [
        Rcode::NoError,
        Rcode::ServFail,
        Rcode::NxDomain,
        Rcode::Refused,
    ] {
        for rd in [true, false] {
            let mut query = with_opt(&build_query(0xC0DE, "WWW.Example.com", TYPE_AAAA));
            if !rd {
                query[2] &= !0x01;
            }
            query[3] |= 0x10; // AD, which the answer does not copy
            let answer = answer_with_rcode(&query, rcode).unwrap();
            let question_end = query.len() - 11;
            assert_eq!(answer.len(), question_end);
            assert_eq!(&answer[..2], &[0xC0, 0xDE]);
            assert_eq!(answer[2], if rd { 0x81 } else { 0x80 });
            assert_eq!(answer[3], 0x80 | rcode.code());
            assert_eq!(&answer[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
            // Byte for byte, case included.
            assert_eq!(&answer[12..], &query[12..question_end]);

            let parsed = parse_response(&answer).unwrap();
            assert_eq!(parsed.id, 0xC0DE);
            assert_eq!(parsed.rcode, rcode.code());
            assert_eq!(parsed.name, "www.example.com");
            assert!(parsed.addrs.is_empty() && parsed.cnames.is_empty());
            assert!(!parsed.truncated);
        }
    }
    let mut response = build_query(1, "example.com", TYPE_A);
    response[2] |= 0x80;
    assert_eq!(
        answer_with_rcode(&response, Rcode::Refused),
        Err(DnsError::NotQuery)
    );
}

#[test]
fn rcodes_convert_both_ways() {
    for rcode in [
        Rcode::NoError,
        Rcode::ServFail,
        Rcode::NxDomain,
        Rcode::Refused,
    ] {
        assert_eq!(Rcode::try_from(u8::from(rcode)), Ok(rcode));
    }
    assert_eq!(Rcode::Refused.code(), 5);
    assert_eq!(Rcode::try_from(1), Err(1));
}

#[test]
fn tcp_frames_round_trip() {
    let a = build_query(1, "example.com", TYPE_A);
    let b = build_query(2, "example.net", TYPE_AAAA);
    let framed = tcp_frame(&a);
    assert_eq!(&framed[..2], &(a.len() as u16).to_be_bytes());
    let stream = [framed, tcp_frame(&b)].concat();
    let (first, rest) = tcp_split(&stream).unwrap();
    assert_eq!(first, &a[..]);
    let (second, rest) = tcp_split(rest).unwrap();
    assert_eq!(second, &b[..]);
    assert!(rest.is_empty());
    for len in 0..a.len() + 2 {
        assert_eq!(tcp_split(&stream[..len]), None, "prefix {len}");
    }
    assert_eq!(tcp_split(&[0, 0, 9]), Some((&[][..], &[9][..])));
}

/// xorshift64: a tiny seeded generator, so the fuzz test is repeatable.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_bytes_never_panic_either_parser() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let seeds = [
        compressed_response(),
        with_opt(&build_query(1, "www.example.com", TYPE_A)),
        pointer_chain(5),
    ];
    let mut parsed = 0;
    for i in 0..10_000 {
        // Random bytes, with a header that often passes the first checks.
        let len = rng.below(300);
        let mut msg: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if msg.len() >= 12 && i % 2 == 0 {
            msg[4] = 0;
            msg[5] = 1;
            msg[6] &= 0x00;
            msg[8] &= 0x00;
            msg[10] &= 0x00;
        }
        parsed += usize::from(parse_query(&msg).is_ok());
        parsed += usize::from(parse_response(&msg).is_ok());
        let _ = answer_with_rcode(&msg, Rcode::ServFail);

        // A valid message with a few bytes changed, or cut short.
        let mut msg = seeds[i % seeds.len()].clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(msg.len());
            msg[at] = rng.next() as u8;
        }
        if rng.below(4) == 0 {
            msg.truncate(rng.below(msg.len()));
        }
        parsed += usize::from(parse_query(&msg).is_ok());
        parsed += usize::from(parse_response(&msg).is_ok());
        let _ = answer_with_rcode(&msg, Rcode::ServFail);
        let _ = tcp_split(&msg);
    }
    // The mutations keep many messages valid, so the parsers' insides ran.
    assert!(parsed > 1_000, "only {parsed} parsed");
}

#[test]
fn srv_records_parse_with_their_target() {
    let query = build_query(7, "_petty._tcp.nodes.test", TYPE_SRV);
    let srv = Srv {
        priority: 10,
        weight: 5,
        port: 8080,
        target: "node-a.nodes.test".into(),
    };
    let msg = build_response(
        &query,
        &[("_petty._tcp.nodes.test", RecordData::Srv(srv.clone()), 30)],
    );
    let r = parse_response(&msg).unwrap();
    assert_eq!(r.srvs, vec![srv]);
    assert!(r.addrs.is_empty());
    // Rdata shorter than its fixed fields is refused.
    let mut short = msg.clone();
    let len_at = short.len() - (6 + 19) - 2;
    short[len_at..len_at + 2].copy_from_slice(&4u16.to_be_bytes());
    short.truncate(len_at + 2 + 4);
    assert!(parse_response(&short).is_err());
}
