//! Builds (if needed) and prints the guest assets: `cargo run -p petty-image --example ensure`.

use std::process::ExitCode;

use petty_image::ImageBuilder;

fn main() -> ExitCode {
    let builder = ImageBuilder::default();
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
