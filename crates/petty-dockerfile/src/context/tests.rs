use std::os::unix::fs::symlink;

use super::*;

fn spec(sources: &[&str], dest: &str, dest_is_dir: bool) -> CopySpec {
    CopySpec {
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.into(),
        dest_is_dir,
        chown: None,
        chmod: None,
        add: false,
    }
}

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn set_mode(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

/// A context: a.txt b.txt c.md src/{main.rs,lib/x.rs} node_modules/m.js
/// logs/{keep.log,drop.log} link -> /etc/passwd, .dockerignore, Dockerfile.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (rel, content) in [
        ("a.txt", "a"),
        ("b.txt", "b"),
        ("c.md", "c"),
        ("src/main.rs", "fn main() {}"),
        ("src/lib/x.rs", "x"),
        ("node_modules/m.js", "m"),
        ("logs/keep.log", "k"),
        ("logs/drop.log", "d"),
        ("Dockerfile", "FROM a"),
        (
            ".dockerignore",
            "node_modules\nlogs\n!logs/keep.log\n*.md\n",
        ),
    ] {
        write(root, rel, content);
    }
    symlink("/etc/passwd", root.join("link")).unwrap();
    set_mode(root, "a.txt", 0o644);
    dir
}

fn dests(entries: &[ContextEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.dest.as_str()).collect()
}

#[test]
fn single_file_and_into_dir() {
    let dir = fixture();
    let ctx = Context::open(dir.path(), None).unwrap();
    let e = ctx.resolve(&spec(&["a.txt"], "/opt/x", false)).unwrap();
    assert_eq!(dests(&e), ["/opt/x"]);
    assert_eq!(e[0].kind, EntryKind::File { size: 1 });
    assert_eq!(e[0].mode, 0o644);
    assert_eq!(e[0].src, ctx.root().join("a.txt"));
    let e = ctx
        .resolve(&spec(&["/a.txt", "./b.txt"], "/opt/", true))
        .unwrap();
    assert_eq!(dests(&e), ["/opt/a.txt", "/opt/b.txt"]);
}

#[test]
fn globs() {
    let dir = fixture();
    let ctx = Context::open(dir.path(), None).unwrap();
    let e = ctx.resolve(&spec(&["*.txt"], "/d/", true)).unwrap();
    assert_eq!(dests(&e), ["/d/a.txt", "/d/b.txt"]);
    let e = ctx.resolve(&spec(&["src/*/*.rs"], "/d", true)).unwrap();
    assert_eq!(dests(&e), ["/d/x.rs"]);
    let e = ctx
        .resolve(&spec(&["[ab].txt", "?.txt"], "/d", true))
        .unwrap();
    assert_eq!(dests(&e), ["/d/a.txt", "/d/b.txt"]);
    // *.md is ignored, so nothing matches.
    let err = ctx.resolve(&spec(&["*.md"], "/d/", true)).unwrap_err();
    assert!(matches!(err, ContextError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("`*.md`"));
    let err = ctx.resolve(&spec(&["*.zip"], "/d/", true)).unwrap_err();
    assert!(
        err.to_string()
            .contains("matches nothing in the build context"),
        "{err}"
    );
    let err = ctx.resolve(&spec(&["[.txt"], "/d/", true)).unwrap_err();
    assert!(matches!(err, ContextError::BadPattern { .. }), "{err}");
}

#[test]
fn directory_source_copies_contents_and_respects_ignore() {
    let dir = fixture();
    let ctx = Context::open(dir.path(), None).unwrap();
    let e = ctx.resolve(&spec(&["src"], "/app", false)).unwrap();
    assert_eq!(dests(&e), ["/app/lib", "/app/lib/x.rs", "/app/main.rs"]);
    assert_eq!(e[0].kind, EntryKind::Dir);
    // The whole context: ignored paths are dropped, the exception kept, links copied as links.
    let e = ctx.resolve(&spec(&["."], "/", true)).unwrap();
    assert_eq!(
        dests(&e),
        [
            "/.dockerignore",
            "/Dockerfile",
            "/a.txt",
            "/b.txt",
            "/link",
            "/logs/keep.log",
            "/src",
            "/src/lib",
            "/src/lib/x.rs",
            "/src/main.rs"
        ]
    );
    let link = e.iter().find(|e| e.dest == "/link").unwrap();
    assert_eq!(link.kind, EntryKind::Symlink("/etc/passwd".into()));
    assert_eq!(link.mode, 0o777);
    // An ignored file named directly is not found, and the error says why.
    let err = ctx
        .resolve(&spec(&["node_modules/m.js"], "/x", false))
        .unwrap_err();
    assert!(
        matches!(err, ContextError::NotFound { ignored: true, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(".dockerignore"));
    let err = ctx
        .resolve(&spec(&["node_modules"], "/x", false))
        .unwrap_err();
    assert!(
        matches!(err, ContextError::NotFound { ignored: true, .. }),
        "{err}"
    );
    // The exception inside an ignored directory survives.
    let e = ctx.resolve(&spec(&["logs"], "/l/", true)).unwrap();
    assert_eq!(dests(&e), ["/l/keep.log"]);
    let e = ctx.resolve(&spec(&["logs/keep.log"], "/k", false)).unwrap();
    assert_eq!(dests(&e), ["/k"]);
}

#[test]
fn dockerignore_text_overrides_file() {
    let dir = fixture();
    let ctx = Context::open(dir.path(), Some("")).unwrap();
    assert!(ctx
        .resolve(&spec(&["node_modules/m.js"], "/x", false))
        .is_ok());
    let ctx = Context::open(dir.path(), Some("Dockerfile\n.dockerignore\n")).unwrap();
    assert!(ctx.resolve(&spec(&["Dockerfile"], "/x", false)).is_err());
    let e = ctx.resolve(&spec(&["."], "/", true)).unwrap();
    assert!(!dests(&e).contains(&"/Dockerfile") && !dests(&e).contains(&"/.dockerignore"));
    let err = Context::open(dir.path(), Some("ok\n[\n")).unwrap_err();
    assert!(
        err.to_string().starts_with(".dockerignore line 2: "),
        "{err}"
    );
}

#[test]
fn escaping_sources_refused() {
    let dir = fixture();
    let ctx = Context::open(dir.path(), None).unwrap();
    for source in ["../x", "src/../../x", "../../../etc/passwd"] {
        let err = ctx.resolve(&spec(&[source], "/x", false)).unwrap_err();
        assert!(
            matches!(err, ContextError::Escapes { .. }),
            "{source}: {err}"
        );
        assert!(err.to_string().contains("outside the build context"));
    }
    // `..` that stays inside is fine; an absolute path is relative to the context.
    assert!(ctx.resolve(&spec(&["src/../a.txt"], "/x", false)).is_ok());
    assert!(ctx.resolve(&spec(&["/etc/passwd"], "/x", false)).is_err());
    // A symlink is copied as a link, never followed; a path through one is refused.
    let e = ctx.resolve(&spec(&["link"], "/x", false)).unwrap();
    assert_eq!(e[0].kind, EntryKind::Symlink("/etc/passwd".into()));
    symlink("/etc", dir.path().join("etc-link")).unwrap();
    let err = ctx
        .resolve(&spec(&["etc-link/passwd"], "/x", false))
        .unwrap_err();
    assert!(matches!(err, ContextError::ThroughSymlink { .. }), "{err}");
    // A glob does not descend through links either.
    assert!(ctx.resolve(&spec(&["etc-*/passwd"], "/x/", true)).is_err());
}

#[test]
fn chmod_and_add_archives() {
    let dir = fixture();
    let root = dir.path();
    fs::write(root.join("a.tar.gz"), [0x1f, 0x8b, 8, 0, 0]).unwrap();
    let ctx = Context::open(root, None).unwrap();
    let mut s = spec(&["src"], "/app", false);
    s.chmod = Some(0o700);
    assert!(ctx.resolve(&s).unwrap().iter().all(|e| e.mode == 0o700));
    let mut add = spec(&["a.tar.gz"], "/x", false);
    add.add = true;
    let err = ctx.resolve(&add).unwrap_err();
    assert!(matches!(err, ContextError::Archive { .. }), "{err}");
    assert!(err.to_string().contains("RUN tar -xf"));
    // COPY copies the archive as is; ADD copies a plain file as is.
    assert!(ctx.resolve(&spec(&["a.tar.gz"], "/x", false)).is_ok());
    let mut add = spec(&["a.txt"], "/x", false);
    add.add = true;
    assert!(ctx.resolve(&add).is_ok());
}

#[test]
fn digest_tracks_content_and_mode_not_ignored_files() {
    let dir = fixture();
    let root = dir.path();
    let ctx = Context::open(root, None).unwrap();
    let all = spec(&["."], "/", true);
    let digest = || Context::digest(&ctx.resolve(&all).unwrap());
    let d0 = digest();
    assert_eq!(d0.len(), 64);
    assert_eq!(d0, digest());
    // An ignored file changing does not matter.
    write(root, "node_modules/m.js", "changed");
    write(root, "logs/drop.log", "changed");
    assert_eq!(digest(), d0);
    // Content does.
    write(root, "src/main.rs", "fn main() { changed() }");
    let d1 = digest();
    assert_ne!(d1, d0);
    // Mode does.
    set_mode(root, "a.txt", 0o755);
    let d2 = digest();
    assert_ne!(d2, d1);
    // A new file does, and so does a link's target.
    write(root, "new.txt", "n");
    let d3 = digest();
    assert_ne!(d3, d2);
    fs::remove_file(root.join("link")).unwrap();
    symlink("/etc/hosts", root.join("link")).unwrap();
    assert_ne!(digest(), d3);
    // The destination is part of it; the order of entries is not.
    let e = ctx
        .resolve(&spec(&["a.txt", "b.txt"], "/d/", true))
        .unwrap();
    let moved = ctx
        .resolve(&spec(&["a.txt", "b.txt"], "/e/", true))
        .unwrap();
    assert_ne!(Context::digest(&e), Context::digest(&moved));
    let reversed: Vec<ContextEntry> = e.iter().rev().cloned().collect();
    assert_eq!(Context::digest(&e), Context::digest(&reversed));
    assert_eq!(Context::digest(&[]).len(), 64);
}

#[test]
fn empty_dir_and_open_errors() {
    let dir = fixture();
    fs::create_dir(dir.path().join("empty")).unwrap();
    let ctx = Context::open(dir.path(), None).unwrap();
    assert_eq!(ctx.resolve(&spec(&["empty"], "/e", false)).unwrap(), vec![]);
    assert!(matches!(
        Context::open(&dir.path().join("nope"), None),
        Err(ContextError::Open { .. })
    ));
    assert!(matches!(
        Context::open(&dir.path().join("a.txt"), None),
        Err(ContextError::Open { .. })
    ));
    // A later source wins a shared destination.
    let e = ctx
        .resolve(&spec(&["a.txt", "src/../a.txt", "b.txt"], "/d/", true))
        .unwrap();
    assert_eq!(dests(&e), ["/d/a.txt", "/d/b.txt"]);
}

#[test]
fn odd_sources_do_not_panic() {
    let dir = fixture();
    let ctx = Context::open(dir.path(), None).unwrap();
    for source in [
        "",
        "/",
        "//",
        ".",
        "*",
        "**",
        "[",
        "\\",
        "a\\",
        "src/**/x",
        "\u{0}",
        "..",
        "*/..",
        "src/*/../..",
    ] {
        let _ = ctx.resolve(&spec(&[source], "/x", true));
        let _ = ctx.resolve(&spec(&[source], "/", false));
    }
}
