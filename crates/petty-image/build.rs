//! Builds the guest agent (`petty-agent`) as a statically linked binary and
//! hands it to the library, which embeds it with `include_bytes!`.
//!
//! The agent is built by a nested `cargo build` with its own target directory
//! (under the outer one, but never the outer one itself: the outer cargo holds
//! that directory's lock while build scripts run). `+crt-static` goes through
//! `CARGO_ENCODED_RUSTFLAGS` together with an explicit `--target`, so it
//! applies to the agent and its dependencies but not to proc-macros or build
//! scripts, which must stay dynamic.
//!
//! `PETTY_AGENT_BINARY=<path>` skips the nested build and embeds that file
//! instead (for packagers who build the agent separately).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use sha2::{Digest, Sha256};

const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
const AGENT_PROFILE: &str = "agent";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("crates/petty-image sits two levels below the workspace root")
        .to_path_buf();

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PETTY_AGENT_BINARY");

    let binary = match env::var_os("PETTY_AGENT_BINARY") {
        Some(path) => PathBuf::from(path),
        None => build_agent(&workspace, &out_dir),
    };

    let bytes = fs::read(&binary).unwrap_or_else(|e| {
        fail(&format!(
            "cannot read the agent binary {}: {e}",
            binary.display()
        ))
    });
    if let Err(why) = check_static(&bytes) {
        fail(&format!(
            "the agent binary {} is not statically linked ({why}); \
             it runs as PID 1 in a guest with its own libc, so it must be static. \
             hint: install libc6-dev (glibc's libc.a), e.g. `scripts/install-deps`",
            binary.display()
        ));
    }
    let sha = hex(&Sha256::digest(&bytes));
    write(&out_dir.join("petty-agent"), &bytes);
    write(&out_dir.join("petty-agent.sha256"), sha.as_bytes());
}

/// Runs the nested cargo and returns the path of the built agent.
fn build_agent(workspace: &Path, out_dir: &Path) -> PathBuf {
    for rel in [
        "Cargo.toml",
        "Cargo.lock",
        "crates/petty-agent/Cargo.toml",
        "crates/petty-agent/src",
        "crates/petty-protocol/Cargo.toml",
        "crates/petty-protocol/src",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(rel).display());
    }

    // OUT_DIR is <target>[/<triple>]/<profile>/build/petty-image-<hash>/out; three levels
    // up is the outer profile directory, which the outer cargo owns but does not lock
    // below its own build/ and deps/ directories.
    let target_dir = out_dir
        .ancestors()
        .nth(3)
        .map(|p| p.join("agent-target"))
        .unwrap_or_else(|| out_dir.join("agent-target"));

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", "petty-agent", "--bin", "petty-agent"])
        .args(["--profile", AGENT_PROFILE, "--target", AGENT_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"));
    // The outer invocation's settings must not leak into the agent build: a
    // clippy/sccache wrapper, the outer target dir, or outer rustflags.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
    // Build scripts' stdout is parsed by cargo for directives; keep the inner
    // cargo's chatter on stderr, which cargo shows when the build fails.
    cmd.stdout(Stdio::from(std::io::stderr()));

    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run the nested cargo for petty-agent: {e}")));
    if !status.success() {
        fail(&format!(
            "building the guest agent (petty-agent) failed with {status}; its cargo output is above"
        ));
    }
    target_dir
        .join(AGENT_TARGET)
        .join(AGENT_PROFILE)
        .join("petty-agent")
}

/// Checks that an ELF file has no program interpreter (`PT_INTERP`), i.e. it is
/// static or static-pie. Reads only the 64-bit little-endian headers.
fn check_static(elf: &[u8]) -> Result<(), String> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let phentsize = u16_at(54);
    let phnum = u16_at(56);
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let Some(ph) = elf.get(off..off + 4) else {
            return Err("truncated program headers".into());
        };
        if u32::from_le_bytes(ph.try_into().unwrap()) == PT_INTERP {
            return Err("it has an ELF interpreter (PT_INTERP)".into());
        }
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) {
    // Only rewrite on change so dependents are not rebuilt needlessly.
    if fs::read(path).ok().as_deref() == Some(bytes) {
        return;
    }
    fs::write(path, bytes)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", path.display())));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}
