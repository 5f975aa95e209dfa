//! Builds (if needed) and prints the guest assets:
//! `cargo run -p petty-image --example ensure`; with `--status`, prints what
//! `petty doctor` would get from [`ImageBuilder::status`] instead.

use std::process::ExitCode;

use petty_image::ImageBuilder;

fn main() -> ExitCode {
    // Where the cache is, which tools and mirror: Petty's settings.
    let settings = match petty_config::load(&petty_config::Sources::process()) {
        Ok(l) => l.settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let builder = ImageBuilder::new(settings.paths.cache_dir.clone())
        .with_search_path(settings.paths.search_path.clone())
        .with_debian_mirror(settings.image.debian_mirror.clone());
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
