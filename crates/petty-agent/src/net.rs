//! The guest's network interface, when its VM has one.
//!
//! A VM given a network has a virtio-net device, which the kernel names
//! `eth0`. At boot the agent gives it the sandbox's fixed address
//! ([`GUEST_IP`]/[`PREFIX_LEN`]), brings it up, routes everything through
//! [`GATEWAY_IP`] (the TAP device in the sandbox's network namespace) and
//! names that address as the DNS server in `/etc/resolv.conf`. The guest
//! has no `ip` or `ifconfig`: this is done with the same ioctls those use.
//! The addresses are the same in every sandbox, so a restored guest keeps
//! them. Without the device nothing is done: the guest has only `lo`.
//! Nothing here is fatal: failures go to the guest console.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use petty_protocol::net::{netmask, GATEWAY_IP, GUEST_IFACE, GUEST_IP, PREFIX_LEN};
use petty_protocol::tcp::GuestNet;

fn log(msg: &str) {
    eprintln!("petty-agent: {msg}");
}

/// Configures the VM's interface: the one `tcp` names by MAC (a VM whose
/// agent is reached over its network, [`petty_protocol::tcp`]), else
/// [`GUEST_IFACE`] with the sandbox's fixed address if the VM has it.
pub fn configure(tcp: Option<&GuestNet>) {
    if let Some(net) = tcp {
        configure_named(net);
        return;
    }
    if !Path::new("/sys/class/net").join(GUEST_IFACE).exists() {
        return;
    }
    if let Err(e) = interface_up(GUEST_IFACE, GUEST_IP, netmask()) {
        log(&format!(
            "configuring {GUEST_IFACE} as {GUEST_IP}/{PREFIX_LEN}: {e}"
        ));
        return;
    }
    if let Err(e) = add_default_route(GATEWAY_IP) {
        log(&format!("adding the default route via {GATEWAY_IP}: {e}"));
    }
    if let Err(e) = write_resolv_conf(Path::new("/etc"), GATEWAY_IP) {
        log(&format!("writing /etc/resolv.conf: {e}"));
    }
}

/// Gives the interface whose MAC is `net.mac` its address and a default
/// route via its gateway. `/etc/resolv.conf` is left as the image has it.
fn configure_named(net: &GuestNet) {
    let Some(name) = interface_with_mac(Path::new("/sys/class/net"), &net.mac) else {
        log(&format!("no network interface has MAC {}", net.mac));
        return;
    };
    if let Err(e) = interface_up(&name, net.ip, net.netmask()) {
        log(&format!(
            "configuring {name} as {}/{}: {e}",
            net.ip, net.prefix
        ));
        return;
    }
    if let Err(e) = add_default_route(net.gateway) {
        log(&format!(
            "adding the default route via {}: {e}",
            net.gateway
        ));
    }
}

/// The interface under `sys_class_net` whose `address` is `mac` (lower
/// case).
fn interface_with_mac(sys_class_net: &Path, mac: &str) -> Option<String> {
    fs::read_dir(sys_class_net).ok()?.flatten().find_map(|e| {
        let addr = fs::read_to_string(e.path().join("address")).ok()?;
        (addr.trim().eq_ignore_ascii_case(mac))
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
}

/// A `struct sockaddr` holding an IPv4 address (a `sockaddr_in`, port 0).
fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data;
    // the kernel reads a sockaddr_in out of the sockaddr for AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// A datagram socket to hand interface ioctls to.
fn control_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    ifr
}

fn ioctl<T>(fd: &OwnedFd, request: libc::c_ulong, arg: &mut T, what: &str) -> std::io::Result<()> {
    // SAFETY: `arg` is the structure `request` takes, valid for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Gives interface `name` address `ip` with `mask`, and brings it up.
fn interface_up(name: &str, ip: Ipv4Addr, mask: Ipv4Addr) -> std::io::Result<()> {
    let fd = control_socket()?;
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(&fd, libc::SIOCSIFADDR, &mut ifr, "SIOCSIFADDR")?;
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_netmask = sockaddr(mask);
    ioctl(&fd, libc::SIOCSIFNETMASK, &mut ifr, "SIOCSIFNETMASK")?;
    let mut ifr = ifreq(name);
    ioctl(&fd, libc::SIOCGIFFLAGS, &mut ifr, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(&fd, libc::SIOCSIFFLAGS, &mut ifr, "SIOCSIFFLAGS")
}

/// Linux's `struct rtentry` (`<linux/route.h>`), which the libc crate
/// defines only for musl: what `SIOCADDRT` takes.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Adds the default route (0.0.0.0/0) via `gateway`; one already there is
/// left as it is.
fn add_default_route(gateway: Ipv4Addr) -> std::io::Result<()> {
    let fd = control_socket()?;
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(gateway),
        rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        // The kernel picks the interface the gateway is on.
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    match ioctl(&fd, libc::SIOCADDRT, &mut rt, "SIOCADDRT") {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Writes `etc/resolv.conf` naming `nameserver`, replacing whatever was
/// there (a file, or a symlink, which is replaced rather than written
/// through): written beside it, then renamed over it.
fn write_resolv_conf(etc: &Path, nameserver: Ipv4Addr) -> std::io::Result<()> {
    let target = etc.join("resolv.conf");
    let tmp = etc.join(".resolv.conf.petty");
    let _ = fs::remove_file(&tmp);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("nameserver {nameserver}\n").as_bytes()))
        .and_then(|()| fs::rename(&tmp, &target));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_is_found_by_its_mac() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mac) in [("eth0", "06:00:ac:10:00:02"), ("eth1", "02:ab:cd:00:00:05")] {
            fs::create_dir(dir.path().join(name)).unwrap();
            fs::write(dir.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(
            interface_with_mac(dir.path(), "02:AB:cd:00:00:05").as_deref(),
            Some("eth1")
        );
        assert_eq!(interface_with_mac(dir.path(), "02:00:00:00:00:09"), None);
    }

    #[test]
    fn rtentry_has_the_kernel_layout() {
        // x86_64 <linux/route.h>: 120 bytes, rt_dev at 88.
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_flags), 56);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_metric), 80);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_dev), 88);
    }

    #[test]
    fn sockaddrs_hold_the_address_in_network_order() {
        let sa = sockaddr(Ipv4Addr::new(169, 254, 0, 21));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        // sa_data: port (2 bytes), then the address.
        let data: Vec<u8> = sa.sa_data.iter().map(|&b| b as u8).collect();
        assert_eq!(&data[..6], &[0, 0, 169, 254, 0, 21]);
    }

    #[test]
    fn resolv_conf_replaces_a_file_or_a_symlink_without_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path();
        write_resolv_conf(etc, GATEWAY_IP).unwrap();
        let conf = etc.join("resolv.conf");
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            "nameserver 169.254.0.22\n"
        );
        // A symlink (as systemd-resolved leaves) is replaced, its target untouched.
        fs::remove_file(&conf).unwrap();
        let elsewhere = etc.join("stub-resolv.conf");
        fs::write(&elsewhere, "nameserver 127.0.0.53\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &conf).unwrap();
        write_resolv_conf(etc, GATEWAY_IP).unwrap();
        assert!(!fs::symlink_metadata(&conf)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            "nameserver 169.254.0.22\n"
        );
        assert_eq!(
            fs::read_to_string(&elsewhere).unwrap(),
            "nameserver 127.0.0.53\n"
        );
        assert!(!etc.join(".resolv.conf.petty").exists());
    }
}
