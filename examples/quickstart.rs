//! The README's "From Rust" example, whole: a test checks the README shows
//! exactly the lines between the markers. Run it with:
//!
//! ```sh
//! cargo run --release -p petty-core --example quickstart
//! ```

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // README begin
    use petty_core::{ManagerConfig, PoolConfig, SandboxConfig, SandboxManager, SandboxPool};
    use petty_vmm::{qemu::QemuVmm, AccelChoice};
    use std::sync::Arc;

    // Where state, guest assets and run directories go: Petty's settings
    // (its config files and PETTY_* variables), as the `petty` CLI reads them.
    let settings = petty_config::load(&petty_config::Sources::process())?.settings;
    let vmm = Arc::new(QemuVmm::new(
        AccelChoice::detect(),
        settings.paths.run_dir.clone(),
    ));
    let mut config = ManagerConfig::new(settings.paths.data_dir.clone());
    config.assets_dir = Some(settings.paths.cache_dir.clone());
    let manager = SandboxManager::new(config, vmm).await?;
    let id = manager
        .create(
            SandboxConfig::builder()
                .name("worker")
                .memory_mib(512)
                .build()?,
        )
        .await?;
    let r = manager
        .execute_code("worker", "python", "print(6*7)")
        .await?;
    assert_eq!(r.stdout, "42\n");
    manager
        .write_file("worker", "/root/data.bin", &[0, 1, 2])
        .await?;

    // Snapshot, then fork: every child starts in the snapshot's exact state.
    manager.snapshot("worker", "checkpoint").await?;
    let children = manager.fork("checkpoint", 4).await?;

    // A warm pool hands out ready VMs in well under a millisecond.
    let pool = SandboxPool::new(manager.clone(), PoolConfig::default());
    pool.start();
    let warm = pool.acquire().await?;
    // README end
    println!("fork children: {}, warm: {warm}", children.len());
    pool.shutdown().await?;
    for child in children {
        manager.destroy(&child.to_string()).await?;
    }
    manager.destroy(&warm.to_string()).await?;
    manager.destroy(&id.to_string()).await?;
    manager.delete_snapshot("checkpoint").await?;
    Ok(())
}
