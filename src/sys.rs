//! The OS calls std does not wrap: the open-file limit, integer socket options
//! (TCP_NODELAY on a listener), binding before connecting, the local time of day.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass. It may refuse (e.g. an
        // unlimited hard limit on macOS); then the old soft limit stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}

/// Sets TCP_NODELAY on a listening socket; on Linux every accepted socket inherits it.
#[cfg(target_os = "linux")]
pub fn set_listener_nodelay(listener: &impl AsRawFd) -> io::Result<()> {
    set_int_option(listener, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// Raises a listening socket's accept queue to `backlog` (the kernel caps it
/// at `net.core.somaxconn`). std and mio listen with 128, which a burst of
/// reconnects (a restart behind a load balancer) overflows: the dropped SYNs
/// are retried by clients only after a second. Calling `listen` again on a
/// listening socket only changes its backlog.
pub fn set_backlog(listener: &impl AsRawFd, backlog: libc::c_int) -> io::Result<()> {
    // SAFETY: listen on a descriptor the caller owns; no memory is passed.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setsockopt` with an integer value, for options std has no setter for.
pub fn set_int_option(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt on a descriptor the caller owns, reading a c_int that
    // outlives the call, with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Connects to `remote` from the address `local` (any port): `bind` before
/// `connect`, which std does not offer.
pub fn connect_from(local: IpAddr, remote: SocketAddr) -> io::Result<TcpStream> {
    let family = match remote {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket takes no pointers; a non-negative result is a new descriptor.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it; dropping closes it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let (addr, len) = sockaddr(SocketAddr::new(local, 0));
    // SAFETY: `addr` holds a valid sockaddr of `len` bytes and outlives the call.
    if unsafe { libc::bind(fd, (&raw const addr).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (addr, len) = sockaddr(remote);
    // SAFETY: as for bind; a blocking connect on our own descriptor.
    if unsafe { libc::connect(fd, (&raw const addr).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpStream::from(socket))
}

/// A socket address in the C layout, and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid value of these plain C structs.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: as above.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: sockaddr_storage is big enough and aligned for any sockaddr.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            // SAFETY: as above.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Hours, minutes and seconds of a Unix time in the local time zone (UTC if unknown).
pub fn local_hms(unix_secs: i64) -> (u8, u8, u8) {
    let t = unix_secs as libc::time_t;
    // SAFETY: all zeroes is a valid `tm`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r (the thread-safe one) reads `t` and writes only `tm`.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        let day = unix_secs.rem_euclid(86_400);
        return ((day / 3600) as u8, (day / 60 % 60) as u8, (day % 60) as u8);
    }
    (tm.tm_hour as u8, tm.tm_min as u8, tm.tm_sec as u8)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn connects_from_the_given_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let source = "127.0.0.2".parse().unwrap();
        let client = super::connect_from(source, listener.local_addr().unwrap()).unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), source);
        assert_eq!(client.local_addr().unwrap(), peer);
        let nowhere = "192.0.2.1".parse().unwrap();
        assert!(super::connect_from(nowhere, listener.local_addr().unwrap()).is_err());
    }

    #[test]
    fn accepted_sockets_inherit_the_listeners_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        super::set_listener_nodelay(&listener).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}

/// `sysconf(name)`: clock ticks per second, the page size (0 if unknown).
pub fn sysconf(name: libc::c_int) -> u64 {
    // SAFETY: sysconf(3) reads a system constant; no pointers.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).unwrap_or(0)
}
