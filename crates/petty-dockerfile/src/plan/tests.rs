use super::*;
use crate::parse::parse;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn plan_of(text: &str, args: &[(&str, &str)]) -> Plan {
    plan(&parse(text).unwrap(), &kv(args)).unwrap()
}

fn plan_err(text: &str) -> DockerfileError {
    plan(&parse(text).unwrap(), &[]).unwrap_err()
}

fn env_of(step: &Step, name: &str) -> Option<String> {
    step.env
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

#[test]
fn run_forms_and_shell() {
    let p = plan_of(
        "FROM a\nRUN echo $HOME\nRUN [\"ls\", \"$HOME\"]\nSHELL [\"/bin/bash\", \"-c\"]\nRUN echo hi\n",
        &[],
    );
    assert_eq!(p.base, "a");
    assert_eq!(
        p.steps[0].action,
        Action::Run(s(&["/bin/sh", "-c", "echo $HOME"]))
    );
    assert_eq!(p.steps[1].action, Action::Run(s(&["ls", "$HOME"])));
    assert_eq!(p.steps[2].action, Action::Meta);
    assert_eq!(
        p.steps[3].action,
        Action::Run(s(&["/bin/bash", "-c", "echo hi"]))
    );
    assert_eq!(p.steps[3].shell, s(&["/bin/bash", "-c"]));
    assert_eq!(p.steps[0].workdir, "/");
    assert_eq!(p.steps[0].user, None);
    assert_eq!(p.steps[0].line, 2);
    assert_eq!(p.steps[0].text, "RUN echo $HOME");
    let e = plan_err("FROM a\n\nRUN []\n");
    assert_eq!(e.line(), 3);
}

#[test]
fn env_args_and_build_args() {
    let text = "ARG BASE=alpine\nARG TAG\nFROM $BASE:${TAG:-3.20}\n\
                ARG BASE\nARG V=1\nARG UNSET\nENV A=$V B=\"$V two\" C='$V'\nENV V=env\nRUN x\nENV D=$V$UNSET\n";
    let p = plan_of(text, &[]);
    assert_eq!(p.base, "alpine:3.20");
    let run = &p.steps[5];
    assert_eq!(env_of(run, "A").as_deref(), Some("1"));
    assert_eq!(env_of(run, "B").as_deref(), Some("1 two"));
    assert_eq!(env_of(run, "C").as_deref(), Some("$V"));
    // ENV wins over ARG, and ARGs are in the RUN environment.
    assert_eq!(env_of(run, "V").as_deref(), Some("env"));
    assert_eq!(env_of(run, "BASE").as_deref(), Some("alpine"));
    assert_eq!(env_of(run, "UNSET"), None);
    assert_eq!(env_of(run, "PATH").as_deref(), Some(DEFAULT_PATH));
    assert_eq!(env_of(&p.steps[6], "D").as_deref(), Some("env"));
    // The image keeps ENV, not ARGs.
    assert!(p.config.env.iter().all(|(k, _)| k != "BASE"));
    assert_eq!(
        p.config
            .env
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["PATH", "A", "B", "C", "V", "D"]
    );

    // Build args override declared ARGs only.
    let p = plan_of(
        text,
        &[
            ("TAG", "3.19"),
            ("V", "9"),
            ("NOPE", "x"),
            ("BASE", "debian"),
        ],
    );
    assert_eq!(p.base, "debian:3.19");
    assert_eq!(env_of(&p.steps[5], "A").as_deref(), Some("9"));
    assert_eq!(env_of(&p.steps[5], "BASE").as_deref(), Some("debian"));
    assert_eq!(p.unused_build_args, s(&["NOPE"]));
    // Pre-FROM args are not visible after FROM unless redeclared.
    let p = plan_of("ARG X=1\nFROM a\nENV Y=$X\n", &[]);
    assert_eq!(
        p.config.env.last().unwrap(),
        &("Y".to_string(), String::new())
    );
}

#[test]
fn env_pairs_see_the_previous_environment() {
    // Docker's documented example: def sees the old abc.
    let p = plan_of(
        "FROM a\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n",
        &[],
    );
    let env = &p.config.env;
    assert!(env.contains(&("abc".into(), "bye".into())));
    assert!(env.contains(&("def".into(), "hello".into())));
    assert!(env.contains(&("ghi".into(), "bye".into())));
    let p = plan_of("FROM a\nENV PATH=/opt/bin:$PATH\n", &[]);
    assert_eq!(
        p.config.env[0],
        ("PATH".into(), format!("/opt/bin:{DEFAULT_PATH}"))
    );
    let p = plan_of("FROM a\nENV legacy value with  spaces\n", &[]);
    assert!(p
        .config
        .env
        .contains(&("legacy".into(), "value with  spaces".into())));
}

#[test]
fn base_image_config() {
    let base = ImageDefaults {
        env: kv(&[("PATH", "/base/bin"), ("LANG", "C.UTF-8")]),
        workdir: Some("/srv".into()),
        user: Some("nobody".into()),
        cmd: Some(s(&["base-cmd"])),
        entrypoint: None,
        labels: kv(&[("from", "base")]),
        exposed: s(&["22/tcp"]),
    };
    let df =
        parse("FROM a\nENV PATH=/x:$PATH\nRUN pwd\nENTRYPOINT [\"/app\"]\nEXPOSE 80\n").unwrap();
    let p = plan_on(&df, &[], &base).unwrap();
    assert_eq!(
        p.config.env,
        kv(&[("PATH", "/x:/base/bin"), ("LANG", "C.UTF-8")])
    );
    assert_eq!(p.steps[1].workdir, "/srv");
    assert_eq!(p.steps[1].user.as_deref(), Some("nobody"));
    // ENTRYPOINT drops an inherited CMD.
    assert_eq!(p.config.cmd, None);
    assert_eq!(p.config.entrypoint, Some(s(&["/app"])));
    assert_eq!(p.config.exposed, s(&["22/tcp", "80/tcp"]));
    assert_eq!(p.config.labels, kv(&[("from", "base")]));
    // A CMD in this Dockerfile survives a later ENTRYPOINT.
    let df = parse("FROM a\nCMD x\nENTRYPOINT [\"/app\"]\n").unwrap();
    assert_eq!(
        plan_on(&df, &[], &base).unwrap().config.cmd,
        Some(s(&["/bin/sh", "-c", "x"]))
    );
}

#[test]
fn workdir_user_and_copy_dest() {
    let p = plan_of(
        "FROM a\nENV APP=/app\nWORKDIR $APP\nWORKDIR src/../lib\nCOPY x .\nCOPY y z\nCOPY a b dir\nCOPY *.c /out\n\
         COPY --chown=${U:-app}:app --chmod=600 f /abs/f\nUSER ${U:-app}\nWORKDIR /\nCOPY q ./sub/\nADD k ..\n",
        &[],
    );
    let actions: Vec<&Action> = p.steps.iter().map(|s| &s.action).collect();
    assert_eq!(actions[1], &Action::Workdir("/app".into()));
    assert_eq!(actions[2], &Action::Workdir("/app/lib".into()));
    let copy = |i: usize| match actions[i] {
        Action::Copy(c) => c.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (copy(3).dest, copy(3).dest_is_dir),
        ("/app/lib/".into(), true)
    );
    assert_eq!(
        (copy(4).dest, copy(4).dest_is_dir),
        ("/app/lib/z".into(), false)
    );
    assert_eq!(
        (copy(5).dest, copy(5).dest_is_dir),
        ("/app/lib/dir".into(), true)
    );
    assert_eq!((copy(6).dest, copy(6).dest_is_dir), ("/out".into(), true));
    let c = copy(7);
    assert_eq!(
        (c.dest.as_str(), c.chown.as_deref(), c.chmod, c.add),
        ("/abs/f", Some("app:app"), Some(0o600), false)
    );
    assert_eq!(p.steps[8].user.as_deref(), Some("app"));
    assert_eq!(p.config.user.as_deref(), Some("app"));
    assert_eq!(copy(10).dest, "/sub/");
    let c = copy(11);
    assert_eq!((c.dest.as_str(), c.dest_is_dir, c.add), ("/", true, true));
    assert_eq!(p.config.workdir.as_deref(), Some("/"));
    // `..` stops at the root.
    let p = plan_of("FROM a\nWORKDIR ../../x/./y//\n", &[]);
    assert_eq!(p.steps[0].action, Action::Workdir("/x/y".into()));
}

#[test]
fn copy_substitution() {
    let p = plan_of(
        "FROM a\nARG SRC=dist\nARG DST\nCOPY $SRC/ \"/opt/${DST:-app}/\"\n",
        &[("DST", "tool")],
    );
    let Action::Copy(c) = &p.steps[2].action else {
        panic!()
    };
    assert_eq!(c.sources, s(&["dist/"]));
    assert_eq!(c.dest, "/opt/tool/");
    let e = plan_err("FROM a\nARG URL=https://example.invalid/a\nADD $URL /a\n");
    assert_eq!(e.line(), 3);
    assert!(e.to_string().contains("download it in a RUN step"));
    let e = plan_err("FROM a\n\nCOPY $NOPE /x\n");
    assert_eq!(e.line(), 3);
    assert!(e.to_string().contains("source is empty"), "{e}");
    let e = plan_err("FROM a\nCOPY x ${D:?set_D_first}\n");
    assert_eq!(e.line(), 2);
    assert!(e.to_string().contains("set_D_first"), "{e}");
}

#[test]
fn config_cmd_entrypoint_labels_expose() {
    let p = plan_of(
        "FROM a\nCMD one\nCMD [\"two\"]\nENTRYPOINT run me\nSHELL [\"/bin/bash\",\"-c\"]\nLABEL a=1 b=\"x y\"\nLABEL a=2\n\
         ARG P=8080\nEXPOSE $P 53/UDP 80/tcp 80\nSTOPSIGNAL SIGINT\nVOLUME /data\nHEALTHCHECK NONE\nMAINTAINER me\n",
        &[],
    );
    assert_eq!(p.config.cmd, Some(s(&["two"])));
    assert_eq!(p.config.entrypoint, Some(s(&["/bin/sh", "-c", "run me"])));
    assert_eq!(p.config.labels, kv(&[("a", "2"), ("b", "x y")]));
    assert_eq!(p.config.exposed, s(&["8080/tcp", "53/udp", "80/tcp"]));
    assert!(p.steps[1..].iter().all(|s| s.action == Action::Meta));
    for bad in ["EXPOSE http", "EXPOSE 80/ftp", "EXPOSE 99999"] {
        let e = plan_err(&format!("FROM a\n{bad}\n"));
        assert_eq!(e.line(), 2);
        assert!(e.to_string().contains("is not a port"), "{bad}: {e}");
    }
}

#[test]
fn escape_directive_reaches_substitution() {
    let p = plan_of("# escape=`\nFROM a\nENV A=`$HOME B=C:\\dir\n", &[]);
    assert!(p.config.env.contains(&("A".into(), "$HOME".into())));
    assert!(p.config.env.contains(&("B".into(), "C:\\dir".into())));
}

#[test]
fn odd_inputs_do_not_panic() {
    for text in [
        "FROM a\nWORKDIR $X\n",
        "FROM a\nUSER $X\n",
        "FROM a\nENV $X=1\n",
        "FROM a\nLABEL ${X}=\n",
        "FROM a\nEXPOSE $X\n",
        "FROM a\nCOPY ${X:?} y\n",
        "FROM a\nENV A=\"\n",
        "FROM a\nCOPY \"a b\" /x\n",
        "FROM a\nWORKDIR ..\n",
        "FROM a\nVOLUME ${\n",
        "FROM a\nSTOPSIGNAL ${X\n",
        "FROM a\nARG A=${B:-${C:-d}}\nENV E=$A\n",
    ] {
        if let Ok(df) = parse(text) {
            let _ = plan(&df, &kv(&[("X", ""), ("", "")]));
        }
    }
}
