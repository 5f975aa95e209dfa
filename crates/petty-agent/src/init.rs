//! PID 1 duties: mount the pseudo filesystems, bring up `lo` (and `eth0`
//! when the VM has a network: [`crate::net`]), grow `/` to fill its disk,
//! find the host channel, serve it for the life of the VM, and power off
//! cleanly.
//!
//! The kernel command line (read from `/proc/cmdline`) may carry
//! `petty.mode=poweroff`, which powers off right after mounting (the
//! bare-boot baseline of `petty bench boot` uses it), and
//! `petty.transport=vsock`, which serves vsock port 52 without first looking
//! for the virtio-serial port (Firecracker), or `petty.transport=tcp` with
//! `petty.port`, `petty.token` and `petty.net`, which configures the
//! interface `petty.net` names and serves TCP to hosts that give the token
//! first ([`petty_protocol::tcp`]; the Flintlock backend).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use petty_protocol::{tcp, SERIAL_PORT_NAME, VSOCK_PORT};

use crate::reaper::reaper;
use crate::server::{self, End, Writer};

fn log(msg: &str) {
    eprintln!("petty-agent: {msg}");
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    let _ = fs::create_dir_all(target);
    let (s, t, f, d) = (
        CString::new(source).unwrap(),
        CString::new(target).unwrap(),
        CString::new(fstype).unwrap(),
        CString::new(data).unwrap(),
    );
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            log(&format!("mount {fstype} on {target}: {e}"));
        }
    }
}

fn setup_filesystems() {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nosuid, "");
    mount("sysfs", "/sys", "sysfs", nosuid, "");
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620,ptmxmode=666",
    );
    mount(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    );
    mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    );
    mount(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    );
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    let name = b"petty";
    // SAFETY: name is valid for its length.
    unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    loopback_up();
}

/// Brings `lo` up so programs can talk to themselves over 127.0.0.1.
fn loopback_up() {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        libc::close(fd);
    }
}

/// Sets the wall clock.
pub fn set_clock(unix_nanos: u64) -> std::io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_nanos % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: ts is a valid timespec.
    match unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Gives a restored guest its own identity: host entropy credited to the
/// kernel RNG and a forced reseed of its output generator, the host's clock,
/// and a hostname.
pub fn refresh(entropy: &[u8], unix_nanos: u64, hostname: Option<&str>) -> std::io::Result<()> {
    let random = OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    // SAFETY: ioctls on our fd with a buffer laid out as rand_pool_info.
    unsafe {
        if libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    set_clock(unix_nanos)?;
    if let Some(name) = hostname {
        // SAFETY: name is valid for its length.
        unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    }
    Ok(())
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers. The VMM runs with -no-reboot
    // (QEMU) or exits on the i8042 reset (Firecracker), so a restart ends the
    // VM; there is no ACPI for a real power-off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Runs the agent as the VM's init. Never returns normally.
pub fn run_as_init() -> ExitCode {
    block_sigio();
    setup_filesystems();
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline
        .split_whitespace()
        .any(|w| w == "petty.mode=poweroff")
    {
        power_off();
    }
    let arg = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    let tcp = arg(tcp::TRANSPORT_ARG) == Some(tcp::TRANSPORT_TCP);
    let guest_net = if tcp {
        let net = arg(tcp::NET_ARG).and_then(tcp::GuestNet::parse);
        if net.is_none() {
            log(&format!(
                "{} is missing or malformed: no network configured",
                tcp::NET_ARG
            ));
        }
        net
    } else {
        None
    };
    // A VM given a network: the interface's address, route (and resolver).
    crate::net::configure(guest_net.as_ref());
    // A root disk larger than the image: grow `/` to fill it before the
    // host's first request.
    crate::disk::grow_root(None, Duration::ZERO);
    // Start reaping before anything can be orphaned to us.
    reaper();
    // Firecracker says `petty.transport=vsock`: no virtio-serial port will
    // appear there, so do not wait for one.
    if tcp {
        let port = arg(tcp::PORT_ARG)
            .and_then(|p| p.parse().ok())
            .unwrap_or(tcp::DEFAULT_PORT);
        match arg(tcp::TOKEN_ARG) {
            Some(token) if token.len() >= tcp::MIN_TOKEN_LEN => crate::tcp::serve(
                (std::net::Ipv4Addr::UNSPECIFIED, port).into(),
                token.into(),
                || power_off(),
            ),
            _ => log(&format!(
                "{}=tcp without a {} of at least {} characters: not serving",
                tcp::TRANSPORT_ARG,
                tcp::TOKEN_ARG,
                tcp::MIN_TOKEN_LEN
            )),
        }
        power_off();
    }
    let vsock_only = arg(tcp::TRANSPORT_ARG) == Some("vsock");
    match (!vsock_only)
        .then(|| find_serial_port(Duration::from_secs(2)))
        .flatten()
    {
        Some(dev) => serve_serial(&dev),
        None => serve_vsock(),
    }
    power_off();
}

/// The `/dev` node of the virtio-serial port named `petty.agent`, if any.
fn find_serial_port(wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(dir) = fs::read_dir("/sys/class/virtio-ports") {
            for entry in dir.flatten() {
                let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if name.trim() == SERIAL_PORT_NAME {
                    return Some(format!("/dev/{}", entry.file_name().to_string_lossy()));
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Serves the virtio-serial port. Reads return end-of-file while no host is
/// connected; each host connection is served afresh.
fn serve_serial(dev: &str) {
    let port = match OpenOptions::new().read(true).write(true).open(dev) {
        Ok(f) => f,
        Err(e) => {
            log(&format!("open {dev}: {e}"));
            return;
        }
    };
    // The virtio console driver signals SIGIO when the host side connects;
    // reads return end-of-file while it is not, so without this an idle VM
    // would have to poll (which under emulation costs every idle guest CPU).
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fd = port.as_raw_fd();
        libc::fcntl(fd, libc::F_SETOWN, libc::getpid());
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC);
    }
    loop {
        let (input, output) = match (port.try_clone(), port.try_clone()) {
            (Ok(i), Ok(o)) => (i, o),
            _ => return,
        };
        let writer = Writer::new(Box::new(output));
        match server::serve(input, writer) {
            End::Shutdown => return,
            // No host connected: sleep until one connects (SIGIO), at most 1 s.
            End::Eof => {
                server::warm_if_restored();
                wait_for_sigio(Duration::from_secs(1))
            }
            End::Protocol(e) => {
                log(&format!("closing connection: {e}"));
                drain_until_disconnect(&port);
            }
            End::Io(e) => {
                log(&format!("read {dev}: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Blocks SIGIO in this thread and every thread started after it, so it is
/// only ever taken by [`wait_for_sigio`]. Called first thing as init.
fn block_sigio() {
    // SAFETY: plain signal-mask calls on a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for a (blocked, hence pending) SIGIO, or `timeout`.
fn wait_for_sigio(timeout: Duration) {
    // SAFETY: sigtimedwait on a set we own; a null siginfo is allowed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        libc::sigtimedwait(&set, std::ptr::null_mut(), &ts);
    }
}

/// After a protocol error the stream cannot be trusted until the host
/// reconnects: discard everything up to the disconnect.
fn drain_until_disconnect(mut port: &File) {
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut port, &mut buf) {
            Ok(0) => {
                wait_for_sigio(Duration::from_secs(1));
                return;
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// Serves vsock port 52 (Firecracker): one thread per host connection.
fn serve_vsock() {
    // SAFETY: socket/bind/listen/accept on a sockaddr_vm we build and own.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            log(&format!(
                "no agent channel: no virtio port {SERIAL_PORT_NAME} and vsock failed: {}",
                std::io::Error::last_os_error()
            ));
            return;
        }
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = VSOCK_PORT;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        if libc::bind(fd, (&addr as *const libc::sockaddr_vm).cast(), len) != 0
            || libc::listen(fd, 16) != 0
        {
            log(&format!(
                "vsock port {VSOCK_PORT}: {}",
                std::io::Error::last_os_error()
            ));
            libc::close(fd);
            return;
        }
        fd
    };
    loop {
        // SAFETY: accept on our listening socket; null address is allowed.
        let conn = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if conn < 0 {
            continue;
        }
        // SAFETY: accept4 returned a fresh fd that we own.
        let file = unsafe { File::from_raw_fd(conn) };
        let Ok(output) = file.try_clone() else {
            continue;
        };
        std::thread::spawn(
            move || match server::serve(file, Writer::new(Box::new(output))) {
                End::Shutdown => power_off(),
                // A restored guest's connections are reset as it wakes.
                _ => server::warm_if_restored(),
            },
        );
    }
}
