//! The `petty-core` library against a real VM: one sandbox, many operations.

use petty_core::{CoreError, ExecRequest, Sandbox};
use petty_vmm::Vmm;
use sha2::{Digest, Sha256};

use crate::{base_image_mib, df_size_mib, leftovers, processes_mentioning, run_root, vmm, DF_ROOT};

async fn sandbox(root: &std::path::Path) -> Sandbox {
    Sandbox::create(&vmm(root), crate::config_builder().build().unwrap())
        .await
        .expect("sandbox boots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_and_list() {
    let root = run_root();
    let sb = sandbox(root.path()).await;
    // 10 MiB of binary data, every byte value, through the framed channel.
    let data: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    sb.write_file("/root/data/blob.bin", &data).await.unwrap();
    let back = sb.read_file("/root/data/blob.bin").await.unwrap();
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
    // The guest sees the same bytes.
    let r = sb.execute("sha256sum /root/data/blob.bin").await.unwrap();
    assert!(r
        .stdout
        .starts_with(&format!("{:x}", Sha256::digest(&data))));

    sb.write_file_mode("/root/data/run.sh", b"#!/bin/sh\necho ran\n", 0o755)
        .await
        .unwrap();
    assert_eq!(
        sb.execute("/root/data/run.sh").await.unwrap().stdout,
        "ran\n"
    );
    sb.mkdir("/root/data/sub").await.unwrap();
    let entries = sb.list_dir("/root/data").await.unwrap();
    let names: Vec<_> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.is_dir, e.size))
        .collect();
    assert_eq!(
        names,
        [
            ("blob.bin", false, data.len() as u64),
            ("run.sh", false, 19),
            ("sub", true, entries[2].size)
        ]
    );
    assert_eq!(sb.stat("/root/data/run.sh").await.unwrap().mode, 0o755);
    sb.rename("/root/data/run.sh", "/root/data/sub/moved.sh")
        .await
        .unwrap();
    sb.remove("/root/data", true).await.unwrap();
    let err = sb.list_dir("/root/data").await.unwrap_err().to_string();
    assert!(err.contains("/root/data"), "{err}");
    sb.destroy().await.unwrap();
    assert!(leftovers(root.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_env_cwd_stdin_and_codes() {
    let root = run_root();
    let sb = sandbox(root.path()).await;
    let mut req = ExecRequest::shell("echo $A-$B; pwd; cat");
    req.env = vec![("A".into(), "1".into()), ("B".into(), "two".into())];
    req.cwd = Some("/usr".into());
    let r = sb.exec(req, Some(b"in\n".to_vec())).await.unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str()), (0, "1-two\n/usr\nin\n"));
    assert_eq!(sb.execute("exit 7").await.unwrap().exit_code, 7);
    let r = sb
        .execute_code(
            "python",
            "import sys; print('py', file=sys.stderr); sys.exit(3)",
        )
        .await
        .unwrap();
    assert_eq!((r.exit_code, r.stderr.as_str()), (3, "py\n"));
    assert_eq!(
        sb.execute_code("bash", "echo ${BASH_VERSION%%.*}")
            .await
            .unwrap()
            .exit_code,
        0
    );
    let err = sb.execute_code("cobol", "x").await.unwrap_err().to_string();
    assert!(err.contains("use python, bash or sh"), "{err}");
    let mut req = ExecRequest::argv(["true"]);
    req.cwd = Some("/no/such/dir".into());
    let err = sb.exec(req, None).await.unwrap_err().to_string();
    assert!(err.contains("/no/such/dir does not exist"), "{err}");
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_command_and_its_children() {
    let root = run_root();
    let sb = sandbox(root.path()).await;
    let mut req = ExecRequest::shell("sleep 1000 & sleep 1000 & sleep 1000");
    req.timeout_ms = Some(1000);
    let r = sb.exec(req, None).await.unwrap();
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 128 + 9);
    // No `sleep` survives anywhere in the guest.
    let r = sb
        .execute("cat /proc/[0-9]*/comm | grep -c '^sleep$'")
        .await
        .unwrap();
    assert_eq!(r.stdout.trim(), "0", "sleeps left: {}", r.stdout);
    assert!(sb.is_healthy().await);
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_execs_in_flight_on_one_sandbox() {
    let root = run_root();
    let sb = std::sync::Arc::new(sandbox(root.path()).await);
    sb.mkdir("/tmp/barrier").await.unwrap();
    // Each exec checks in and waits for all 20: only possible if all 20 run
    // at once over the one agent channel.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let sb = sb.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = ExecRequest::shell(format!(
                "touch /tmp/barrier/{i}; while [ $(ls /tmp/barrier | wc -l) -lt 20 ]; do sleep 0.1; done; echo {i}"
            ));
            req.timeout_ms = Some(120_000);
            sb.exec(req, None).await.unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert!(!r.timed_out, "exec {i} never saw all 20 running");
        assert_eq!(r.stdout, format!("{i}\n"));
    }
    std::sync::Arc::into_inner(sb)
        .unwrap()
        .destroy()
        .await
        .unwrap();
    assert!(leftovers(root.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_reports_its_own_kernel_and_limits() {
    let root = run_root();
    let config = crate::config_builder()
        .memory_mib(384)
        .vcpu_count(1)
        .build()
        .unwrap();
    let sb = Sandbox::create(&vmm(root.path()), config).await.unwrap();
    assert!(sb.guest_kernel().starts_with("6.1."));
    let r = sb
        .execute("uname -r; nproc; grep MemTotal /proc/meminfo")
        .await
        .unwrap();
    let lines: Vec<_> = r.stdout.lines().collect();
    assert_eq!(lines[0], sb.guest_kernel());
    assert_eq!(lines[1], "1");
    let mem_kib: u64 = lines[2].split_whitespace().nth(1).unwrap().parse().unwrap();
    // The kernel keeps some for itself; the rest is what the config asked for.
    assert!(
        (300 * 1024..=384 * 1024).contains(&mem_kib),
        "MemTotal {mem_kib} kB"
    );
    sb.destroy().await.unwrap();
}

/// Size of the guest's `/` in MiB, as `df` reports it.
async fn root_fs_mib(sb: &Sandbox) -> u64 {
    let r = sb.execute(DF_ROOT).await.unwrap();
    assert!(r.success(), "{r:?}");
    df_size_mib(&r.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_disk_grows_the_root_file_system_at_boot() {
    let root = run_root();
    let vmm = vmm(root.path());
    let disk_mib = base_image_mib() + 512;
    let big = crate::config_builder()
        .disk_size_mib(disk_mib)
        .build()
        .unwrap();
    let (plain, big) = tokio::join!(
        Sandbox::create(
            &vmm,
            crate::config_builder().disk_free_mib(0).build().unwrap()
        ),
        Sandbox::create(&vmm, big),
    );
    let (plain, big) = (plain.unwrap(), big.unwrap());
    let (before, after) = (root_fs_mib(&plain).await, root_fs_mib(&big).await);
    eprintln!(
        "df -m /: {before} MiB on the base image's disk, {after} MiB on a {disk_mib} MiB disk"
    );
    // 512 MiB more disk, less the new block groups' bitmaps and inode tables.
    assert!(
        (480..=512).contains(&after.saturating_sub(before)),
        "/ grew from {before} to {after} MiB on a disk 512 MiB larger"
    );
    let r = big.execute("cat /sys/block/vda/size").await.unwrap();
    assert_eq!(r.stdout.trim(), (u64::from(disk_mib) * 2048).to_string());
    // The space is there to use: more than the base image has free.
    let r = big
        .execute_code(
            "python",
            "import os\nfd = os.open('/root/fill', os.O_CREAT | os.O_WRONLY)\nos.posix_fallocate(fd, 0, 800 << 20)",
        )
        .await
        .unwrap();
    assert!(r.success(), "{r:?}");
    plain.destroy().await.unwrap();
    big.destroy().await.unwrap();
    assert!(leftovers(root.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sandbox_has_room_to_work_by_default() {
    let root = run_root();
    let vmm = vmm(root.path());
    let sb = Sandbox::create(&vmm, crate::sandbox_config())
        .await
        .unwrap();
    let r = sb.execute("df -m --output=avail /").await.unwrap();
    let free = df_size_mib(&r.stdout);
    eprintln!("df -m /: {free} MiB free on a default sandbox");
    assert!(free >= 2048, "only {free} MiB free on a default sandbox");
    // What an `apt-get install` of a few packages needs, and more.
    let r = sb
        .execute(
            "dd if=/dev/zero of=/root/big bs=1M count=1536 status=none && sync && ls -l /root/big",
        )
        .await
        .unwrap();
    assert!(r.success(), "{r:?}");
    assert!(r.stdout.contains(&(1536u64 << 20).to_string()), "{r:?}");
    sb.destroy().await.unwrap();
    assert!(leftovers(root.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_smaller_than_the_image_is_refused_and_leaves_nothing() {
    let root = run_root();
    let vmm = vmm(root.path());
    let base = base_image_mib();
    let small = crate::config_builder()
        .disk_size_mib(base - 1)
        .build()
        .unwrap();
    let err = Sandbox::create(&vmm, small).await.err().expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, CoreError::InvalidConfig(_)), "{err:?}");
    assert!(
        msg.contains(&format!("disk_size_mib {}", base - 1))
            && msg.contains(&format!("{base} MiB")),
        "{msg}"
    );
    // The VMM refuses it as well when asked directly.
    let assets = crate::assets();
    let config = petty_vmm::VmConfig {
        vcpus: 1,
        disk_size_mib: Some(base - 1),
        ..petty_vmm::VmConfig::new("too-small", &assets.kernel, &assets.rootfs)
    };
    let err = vmm.start(&config).await.err().expect("refused");
    assert!(
        matches!(err, petty_vmm::VmmError::DiskTooSmall { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("disk_size_mib"), "{err}");
    assert!(leftovers(root.path()).is_empty());
    assert!(processes_mentioning(&root.path().display().to_string()).is_empty());
}

/// Under TCG guest processes load at fixed addresses (QEMU 7.2 reuses code
/// it translated only at the same virtual address, so each exec would
/// translate its program and libc afresh); asked for, ASLR is back. Each
/// `grep` reads its own mappings: the same libc base twice, or two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_aslr_is_off_under_tcg_and_on_when_asked_for() {
    let root = run_root();
    let base = "grep -m1 'libc.so' /proc/self/maps | cut -d- -f1";
    let probe = format!("cat /proc/sys/kernel/randomize_va_space; {base}; {base}");
    let default = vmm(root.path());
    if crate::settings().backend.qemu.guest_aslr == petty_config::Switch::Auto {
        let kvm = default.accel().accel == petty_vmm::Accel::Kvm;
        assert_eq!(
            default.guest_aslr(),
            kvm,
            "the default is ASLR under KVM only"
        );
    }
    let default_aslr = default.guest_aslr();
    let asked = vmm(root.path()).with_guest_aslr(true);
    for (vmm, aslr) in [(default, default_aslr), (asked, true)] {
        let config = crate::config_builder().build().unwrap();
        let sb = Sandbox::create(&vmm, config).await.expect("sandbox boots");
        let out = sb.execute(&probe).await.unwrap().stdout;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(lines[0], if aslr { "2" } else { "0" }, "{out}");
        assert_eq!(lines[1] == lines[2], !aslr, "libc bases: {out}");
        sb.destroy().await.unwrap();
    }
    assert!(leftovers(root.path()).is_empty());
}
