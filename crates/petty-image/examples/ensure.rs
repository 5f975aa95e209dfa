//! Builds (if needed) and prints the guest assets:
//! `cargo run -p petty-image --example ensure`; with `--status`, prints what
//! `petty doctor` would get from [`ImageBuilder::status`] instead.

use std::process::ExitCode;

use petty_image::ImageBuilder;

fn main() -> ExitCode {
    let builder = ImageBuilder::default();
    if std::env::args().any(|a| a == "--status") {
        for s in builder.status() {
            let mark = if s.present {
                "ok"
            } else if s.needed {
                "MISSING"
            } else {
                "absent"
            };
            let path = s.path.map(|p| p.display().to_string()).unwrap_or_default();
            println!("{mark:8} {:?} {:18} {path}", s.kind, s.name);
            if let Some(detail) = s.detail {
                println!("         {detail}");
            }
            if let Some(fix) = s.fix {
                println!("         fix: {fix}");
            }
        }
        return ExitCode::SUCCESS;
    }
    match builder.ensure() {
        Ok(assets) => {
            println!("kernel  {}", assets.kernel.display());
            println!("vmlinux {}", assets.vmlinux.display());
            println!("rootfs  {}", assets.rootfs.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            let mut msg = format!("error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                msg.push_str(&format!("\n  caused by: {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
