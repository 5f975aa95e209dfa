use super::*;

fn kinds(text: &str) -> Vec<Kind> {
    parse(text)
        .unwrap()
        .instructions
        .into_iter()
        .map(|i| i.kind)
        .collect()
}

fn one(text: &str) -> Kind {
    kinds(&format!("FROM alpine\n{text}\n")).remove(0)
}

fn err(text: &str) -> DockerfileError {
    parse(text).unwrap_err()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn basic_file() {
    let df = parse(
        "# syntax=docker/dockerfile:1\n\
         FROM debian:12 AS base\n\
         # a comment\n\
         \n\
         RUN apt-get update && \\\n    apt-get install -y jq\n\
         from_ignored_case_not\n",
    );
    let err = df.unwrap_err();
    assert_eq!(err.line(), 7);
    assert!(err
        .to_string()
        .starts_with("Dockerfile line 7: unknown instruction `from_ignored_case_not`"));

    let df = parse("FROM debian:12 AS base\nrun echo hi\nCmd [\"sh\"]\n").unwrap();
    assert_eq!(
        df.from,
        From {
            image: "debian:12".into(),
            raw: "debian:12".into(),
            stage: Some("base".into()),
            line: 1
        }
    );
    assert_eq!(
        df.instructions[0].kind,
        Kind::Run(Command::Shell("echo hi".into()))
    );
    assert_eq!(df.instructions[0].text, "run echo hi");
    assert_eq!(df.instructions[0].line, 2);
    assert_eq!(
        df.instructions[1].kind,
        Kind::Cmd(Command::Exec(s(&["sh"])))
    );
}

#[test]
fn continuations_comments_and_line_numbers() {
    let text = "FROM alpine\n\
                RUN apk add \\\n\
                # a comment inside\n\
                \n\
                \x20   curl \\\n\
                \x20   jq\n\
                ENV A=1\n";
    let df = parse(text).unwrap();
    assert_eq!(df.instructions[0].line, 2);
    assert_eq!(
        df.instructions[0].kind,
        Kind::Run(Command::Shell("apk add     curl     jq".into()))
    );
    assert_eq!(df.instructions[0].text, "RUN apk add     curl     jq");
    assert_eq!(df.instructions[1].line, 7);

    // A continued instruction reports its first line.
    let e = err("FROM alpine\n\nCOPY --from=build \\\n  /a \\\n  /b\n");
    assert_eq!(e.line(), 3);
    assert!(e
        .to_string()
        .starts_with("Dockerfile line 3: COPY --from is not supported; hint: multi-stage"));

    // Trailing whitespace after the escape still continues; a continuation at EOF ends the instruction.
    assert_eq!(
        one("RUN a \\  \t\n b"),
        Kind::Run(Command::Shell("a  b".into()))
    );
    assert_eq!(
        kinds("FROM a\nRUN x \\"),
        vec![Kind::Run(Command::Shell("x".into()))]
    );
    // `#` after the start of an instruction is not a comment.
    assert_eq!(
        one("RUN echo # not a comment"),
        Kind::Run(Command::Shell("echo # not a comment".into()))
    );
    // Indented comments, CRLF, a BOM.
    assert_eq!(
        kinds("\u{feff}FROM a\r\n   # c\r\nRUN x\r\n"),
        vec![Kind::Run(Command::Shell("x".into()))]
    );
}

#[test]
fn escape_directive() {
    let df = parse("# escape=`\nFROM mcr/windows\nRUN dir `\n  C:\\\n").unwrap();
    assert_eq!(df.escape, '`');
    assert_eq!(
        df.instructions[0].kind,
        Kind::Run(Command::Shell("dir   C:\\".into()))
    );
    // Directives only count at the top.
    let df = parse("FROM a\n# escape=`\nRUN a \\\n b\n").unwrap();
    assert_eq!(df.escape, '\\');
    let df = parse("# comment\n# escape=`\nFROM a\n").unwrap();
    assert_eq!(df.escape, '\\');
    // Spaces and case.
    assert_eq!(parse("#  ESCAPE = ` \nFROM a\n").unwrap().escape, '`');
    // Syntax directive ignored, then escape.
    assert_eq!(
        parse("# syntax=x\n# escape=`\nFROM a\n").unwrap().escape,
        '`'
    );
    let e = err("# escape=x\nFROM a\n");
    assert_eq!(e.line(), 1);
    assert!(e.to_string().contains("invalid escape"));
    assert_eq!(err("# escape=`\n# escape=\\\nFROM a\n").line(), 2);
}

#[test]
fn exec_and_shell_forms() {
    assert_eq!(
        one("RUN [\"echo\", \"a b\"]"),
        Kind::Run(Command::Exec(s(&["echo", "a b"])))
    );
    assert_eq!(
        one("ENTRYPOINT [\"/bin/app\"]"),
        Kind::Entrypoint(Command::Exec(s(&["/bin/app"])))
    );
    // Invalid JSON falls back to the shell form, as in Docker.
    assert_eq!(
        one("CMD [echo, hi]"),
        Kind::Cmd(Command::Shell("[echo, hi]".into()))
    );
    assert_eq!(
        one("CMD [\"a\", 1]"),
        Kind::Cmd(Command::Shell("[\"a\", 1]".into()))
    );
    assert_eq!(
        one("CMD [\"a\"] x"),
        Kind::Cmd(Command::Shell("[\"a\"] x".into()))
    );
    assert_eq!(one("CMD []"), Kind::Cmd(Command::Exec(vec![])));
    assert_eq!(
        one("SHELL [\"/bin/bash\", \"-eu\", \"-c\"]"),
        Kind::Shell(s(&["/bin/bash", "-eu", "-c"]))
    );
    assert_eq!(
        one("VOLUME [\"/a\", \"/b\"]"),
        Kind::Volume(s(&["/a", "/b"]))
    );
    assert_eq!(one("VOLUME /a /b"), Kind::Volume(s(&["/a", "/b"])));
    let e = err("FROM a\nSHELL /bin/bash -c\n");
    assert_eq!(e.line(), 2);
    assert!(e.to_string().contains("JSON form"));
    assert!(parse("FROM a\nSHELL []\n").is_err());
}

#[test]
fn env_and_label() {
    assert_eq!(
        one("ENV a=b c=\"d e\" f='g h' i=j\\ k"),
        Kind::Env(vec![
            ("a".into(), "b".into()),
            ("c".into(), "\"d e\"".into()),
            ("f".into(), "'g h'".into()),
            ("i".into(), "j\\ k".into()),
        ])
    );
    assert_eq!(
        one("ENV a b c"),
        Kind::Env(vec![("a".into(), "b c".into())])
    );
    assert_eq!(
        one("ENV a=\"\""),
        Kind::Env(vec![("a".into(), "\"\"".into())])
    );
    assert_eq!(one("ENV a="), Kind::Env(vec![("a".into(), "".into())]));
    assert_eq!(
        one("LABEL org.opencontainers.image.title=\"My app\" version=1"),
        Kind::Label(vec![
            ("org.opencontainers.image.title".into(), "\"My app\"".into()),
            ("version".into(), "1".into())
        ])
    );
    assert_eq!(
        one("LABEL maintainer me@example"),
        Kind::Label(vec![("maintainer".into(), "me@example".into())])
    );
    let e = err("FROM a\nENV a=1 b\n");
    assert_eq!(e.line(), 2);
    assert!(e.to_string().contains("no `=` in `b`"), "{e}");
    assert!(err("FROM a\nENV onlyname\n")
        .to_string()
        .contains("has no value"));
    assert!(err("FROM a\nENV =x\n").to_string().contains("no name"));
}

#[test]
fn arg() {
    assert_eq!(one("ARG V"), Kind::Arg("V".into(), None));
    assert_eq!(one("ARG V=1.2"), Kind::Arg("V".into(), Some("1.2".into())));
    assert_eq!(
        one("ARG V=\"a b\""),
        Kind::Arg("V".into(), Some("\"a b\"".into()))
    );
    assert_eq!(one("ARG V="), Kind::Arg("V".into(), Some("".into())));
    assert!(err("FROM a\nARG a b\n")
        .to_string()
        .contains("one ARG per line"));
    assert!(parse("FROM a\nARG =x\n").is_err());
}

#[test]
fn from_and_pre_from_args() {
    let df = parse("ARG TAG=12\nARG IMG=debian:${TAG}\nFROM $IMG\n").unwrap();
    assert_eq!(df.from.image, "debian:12");
    assert_eq!(df.from.raw, "$IMG");
    assert_eq!(df.from.line, 3);
    assert_eq!(
        df.args_before_from,
        vec![
            ("TAG".into(), Some("12".into())),
            ("IMG".into(), Some("debian:${TAG}".into()))
        ]
    );
    assert_eq!(
        parse("from Alpine as B\n").unwrap().from.stage.as_deref(),
        Some("B")
    );
    let e = err("ARG X\nFROM $X\n");
    assert_eq!(e.line(), 2);
    assert!(e.to_string().contains("names no image"));
    assert!(err("FROM\n").to_string().contains("FROM needs an image"));
    assert!(err("FROM a b\n").to_string().contains("optional `AS name`"));
    let e = err("FROM --platform=linux/amd64 a\n");
    assert!(matches!(e, DockerfileError::Unsupported { .. }));
}

#[test]
fn missing_or_late_from() {
    let e = err("");
    assert!(e.to_string().contains("no FROM"), "{e}");
    let e = err("# only a comment\n\n");
    assert!(e.to_string().contains("no FROM"));
    let e = err("ARG A\nRUN echo\nFROM a\n");
    assert_eq!(e.line(), 2);
    assert!(
        e.to_string()
            .starts_with("Dockerfile line 2: RUN comes before FROM; hint:"),
        "{e}"
    );
    let e = err("FROM a\nRUN x\nFROM b\n");
    assert_eq!(e.line(), 3);
    assert!(
        e.to_string()
            .contains("a second FROM (the first is on line 1)"),
        "{e}"
    );
}

#[test]
fn copy_and_add() {
    assert_eq!(
        one("COPY --chown=app:app --chmod=0755 --link a b /dest/"),
        Kind::Copy(Copy {
            add: false,
            sources: s(&["a", "b"]),
            dest: "/dest/".into(),
            chown: Some("app:app".into()),
            chmod: Some(0o755),
            link: true
        })
    );
    assert_eq!(
        one("ADD [\"a b\", \"/c d/\"]"),
        Kind::Copy(Copy {
            add: true,
            sources: s(&["a b"]),
            dest: "/c d/".into(),
            chown: None,
            chmod: None,
            link: false
        })
    );
    let Kind::Copy(c) = one("copy --chmod=644 x y") else {
        panic!()
    };
    assert_eq!(c.chmod, Some(0o644));
    for (text, needle) in [
        ("COPY a", "needs a source and a destination"),
        ("COPY --chmod=rwx a b", "not an octal mode"),
        ("COPY --chmod=99 a b", "not an octal mode"),
        ("COPY --chmod=77777 a b", "not an octal mode"),
        ("COPY --bogus a b", "unknown or malformed flag `--bogus`"),
        ("COPY --chown a b", "unknown or malformed flag `--chown`"),
    ] {
        let e = err(&format!("FROM a\n{text}\n"));
        assert_eq!(e.line(), 2, "{text}");
        assert!(e.to_string().contains(needle), "{text}: {e}");
    }
    for (text, needle) in [
        ("COPY --from=builder /a /b", "multi-stage"),
        (
            "ADD https://example.invalid/x.tgz /x",
            "download it in a RUN step",
        ),
        (
            "ADD http://example.invalid/x /x",
            "download it in a RUN step",
        ),
        (
            "ADD git@example.invalid:a/b.git /x",
            "download it in a RUN step",
        ),
        ("COPY --parents a /b/", "remove the flag"),
        ("COPY <<EOF /f", "heredoc"),
        ("RUN <<EOF", "heredoc"),
        ("RUN cat <<-'END' > /f", "heredoc"),
        (
            "RUN --mount=type=cache,target=/root/.cache pip install x",
            "RUN --mount",
        ),
        ("RUN --network=none make", "RUN --network"),
        ("ONBUILD RUN make", "ONBUILD"),
    ] {
        let e = err(&format!("FROM a\n{text}\n"));
        assert_eq!(e.line(), 2, "{text}");
        assert!(
            matches!(e, DockerfileError::Unsupported { .. }),
            "{text}: {e:?}"
        );
        assert!(e.to_string().contains(needle), "{text}: {e}");
    }
    // Here-strings and shifts are not heredocs.
    assert!(parse("FROM a\nRUN cat <<< hi\nRUN echo $((1<<2))\n").is_ok());
    assert!(parse("FROM a\nRUN [\"sh\", \"-c\", \"cat <<EOF\"]\n").is_ok());
}

#[test]
fn other_instructions() {
    assert_eq!(one("WORKDIR /a b"), Kind::Workdir("/a b".into()));
    assert_eq!(one("USER app:app"), Kind::User("app:app".into()));
    assert_eq!(one("EXPOSE 80 53/udp"), Kind::Expose(s(&["80", "53/udp"])));
    assert_eq!(
        one("STOPSIGNAL SIGTERM"),
        Kind::StopSignal("SIGTERM".into())
    );
    assert_eq!(
        one("HEALTHCHECK --interval=5s CMD true"),
        Kind::Healthcheck("--interval=5s CMD true".into())
    );
    assert_eq!(
        one("MAINTAINER Me <me@example>"),
        Kind::Maintainer("Me <me@example>".into())
    );
    assert!(err("FROM a\nUSER a b\n")
        .to_string()
        .contains("exactly one argument"));
    for name in [
        "RUN", "CMD", "COPY", "ENV", "WORKDIR", "EXPOSE", "LABEL", "ARG", "USER", "VOLUME",
    ] {
        let e = err(&format!("FROM a\n{name}\n"));
        assert_eq!(e.line(), 2);
        assert!(
            e.to_string().contains("requires at least one argument"),
            "{name}: {e}"
        );
    }
}

#[test]
fn odd_inputs_do_not_panic() {
    let odd = [
        "",
        "\\",
        "`",
        "#",
        "# escape=",
        "# escape=`",
        "FROM",
        "FROM \\",
        "\u{feff}",
        "\r",
        "\r\n\r\n",
        "FROM a\n\\\n",
        "FROM a\nRUN [",
        "FROM a\nRUN [\"",
        "FROM a\nCOPY [\"a\"]",
        "FROM a\nCOPY [] x",
        "FROM a\nENV \"",
        "FROM a\nENV a=\"",
        "FROM a\nENV a='",
        "FROM a\nENV \\",
        "FROM a\nLABEL =",
        "FROM a\nCOPY --=x a b",
        "FROM a\nCOPY -- a b",
        "FROM a\nCOPY --chown= a b",
        "FROM a\nRUN --",
        "FROM a\nRUN <<",
        "FROM a\nRUN <<1",
        "FROM a\nARG ==",
        "ARG A=${\nFROM a",
        "ARG A=\"\nFROM a",
        "FROM ${A:?missing}",
        "FROM a\nEXPOSE \u{0}",
        "FROM a\n\u{2028}RUN x",
        "FROM a\nRUN \u{0}",
        "FROM a\nADD",
        "FROM a\nHEALTHCHECK",
        "FROM ａ\nＲＵＮ x",
    ];
    for text in odd {
        let _ = parse(text);
    }
    // Every prefix of a realistic file.
    let full = "# escape=\\\nARG V=1\nFROM alpine:${V} AS x\nENV A=\"b c\" \\\n  D=e\nCOPY --chmod=755 a* /x/\nRUN [\"sh\", \"-c\", \"echo\"]\n";
    for end in 0..=full.len() {
        if full.is_char_boundary(end) {
            let _ = parse(&full[..end]);
        }
    }
}
