//! The client's address behind a proxy: `--trusted-proxy` blocks, the PROXY
//! protocol header (v1 text, v2 binary) a proxy sends before the request,
//! and the last `X-Forwarded-For` hop. Pure code: bytes in, an address out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address block, `10.0.0.0/8` or one address (`127.0.0.1`, `::1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX` (a `--trusted-proxy` value).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text}: not an IP address or CIDR block"))?;
        let most = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => most,
            Some(digits) => match digits.parse::<u8>() {
                Ok(p) if p <= most && p.to_string() == digits => p,
                _ => return Err(format!("{text}: the prefix must be 0 to {most}")),
            },
        };
        // `::ffff:a.b.c.d/104` is the IPv4 block a.b.c.d/8: peers are compared as IPv4.
        let (addr, prefix) = match addr.to_canonical() {
            IpAddr::V4(v4) if addr.is_ipv6() && prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
            _ => (addr, prefix),
        };
        // Kept as the block's first address, so one block has one form (`10.1.2.3/8` is `10.0.0.0/8`).
        let addr = match addr {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask(prefix, 32) as u32).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask(prefix, 128)).into()),
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip.to_canonical() {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((block, block_len), (addr, addr_len)) = (bits(self.addr), bits(ip));
        if block_len != addr_len {
            return false;
        }
        let mask = mask(self.prefix, 128);
        block & mask == addr & mask
    }
}

/// `ADDR` for one address, else `ADDR/PREFIX` (the block's first address).
impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let most = if self.addr.is_ipv4() { 32 } else { 128 };
        match self.prefix == most {
            true => write!(f, "{}", self.addr),
            false => write!(f, "{}/{}", self.addr, self.prefix),
        }
    }
}

/// The top `prefix` bits of a `width`-bit address set.
fn mask(prefix: u8, width: u32) -> u128 {
    match u32::from(prefix) {
        0 => 0,
        p => (u128::MAX << (128 - p)) >> (128 - width),
    }
}

/// The v2 header's first 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The longest v2 header we read (its addresses and TLVs): a header is sent
/// in one piece, well under this.
const V2_MAX: usize = 16 + 512;

/// What the first bytes of a connection from a proxy say.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// They do not begin with a PROXY header (nor could they, with more bytes).
    Absent,
    /// A header, `len` bytes long; `client` is the address it gives (`None`:
    /// `LOCAL` or `UNKNOWN`, the proxy's own connection, such as a health check).
    Present { client: Option<IpAddr>, len: usize },
    /// A header that is cut short or not well formed. A proxy sends its
    /// header in one piece, before anything else, so a partial one is refused
    /// rather than waited for.
    Bad,
}

/// Reads a PROXY protocol header (v1 or v2) at the start of `bytes`.
pub fn proxy_header(bytes: &[u8]) -> ProxyHeader {
    if bytes.starts_with(b"PROXY ") {
        return v1(bytes);
    }
    if bytes.starts_with(V2_SIGNATURE) {
        return v2(bytes);
    }
    let could_be = |sig: &[u8]| !bytes.is_empty() && sig.starts_with(bytes);
    match could_be(b"PROXY ") || could_be(V2_SIGNATURE) {
        true => ProxyHeader::Bad,
        false => ProxyHeader::Absent,
    }
}

/// Whether `bytes` begin as only a PROXY header can: `PROXY ` or the v2
/// signature's first bytes (no HTTP request starts with a NUL).
pub fn is_header_start(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PROXY ") || bytes.starts_with(&V2_SIGNATURE[..5])
}

/// `PROXY TCP4 SRC DST SPORT DPORT\r\n`, `PROXY TCP6 …`, `PROXY UNKNOWN …`.
fn v1(bytes: &[u8]) -> ProxyHeader {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return ProxyHeader::Bad;
    };
    let Ok(line) = std::str::from_utf8(&window[..end]) else {
        return ProxyHeader::Bad;
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let client = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let (Ok(src), Ok(dst)) = (src.parse::<IpAddr>(), dst.parse::<IpAddr>()) else {
                return ProxyHeader::Bad;
            };
            let v4 = *family == "TCP4";
            let port = |p: &str| p.parse::<u16>().is_ok() && (p == "0" || !p.starts_with('0'));
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 || !port(sport) || !port(dport) {
                return ProxyHeader::Bad;
            }
            Some(src.to_canonical())
        }
        _ => return ProxyHeader::Bad,
    };
    ProxyHeader::Present {
        client,
        len: end + 2,
    }
}

/// The binary header: signature, version and command, family, length, addresses.
fn v2(bytes: &[u8]) -> ProxyHeader {
    let (Some(&version_command), Some(&family), Some(len)) = (
        bytes.get(12),
        bytes.get(13),
        bytes
            .get(14..16)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))),
    ) else {
        return ProxyHeader::Bad;
    };
    let total = 16 + len;
    if version_command >> 4 != 2 || total > V2_MAX || bytes.len() < total {
        return ProxyHeader::Bad;
    }
    let addresses = &bytes[16..total];
    let client = match (version_command & 0xf, family >> 4) {
        // LOCAL: the proxy's own connection; the addresses are to be ignored.
        (0, _) => None,
        (1, 1) if addresses.len() >= 12 => {
            let octets: [u8; 4] = addresses[..4].try_into().unwrap_or_default();
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        (1, 2) if addresses.len() >= 36 => {
            let octets: [u8; 16] = addresses[..16].try_into().unwrap_or_default();
            Some(IpAddr::V6(Ipv6Addr::from(octets)).to_canonical())
        }
        // UNSPEC or a UNIX socket: no address to take.
        (1, 0 | 3) => None,
        _ => return ProxyHeader::Bad,
    };
    ProxyHeader::Present { client, len: total }
}

/// The last hop of the last `X-Forwarded-For` header (what the proxy in
/// front of us saw), if it is an address.
pub fn forwarded_for(headers: &[httparse::Header<'_>]) -> Option<IpAddr> {
    let value = headers
        .iter()
        .rfind(|h| h.name.eq_ignore_ascii_case("X-Forwarded-For"))?
        .value;
    let last = std::str::from_utf8(value).ok()?.rsplit(',').next()?.trim();
    // `1.2.3.4:5678` and `[2001:db8::1]:5678` (some proxies add the port).
    let bare = match last.strip_prefix('[') {
        Some(rest) => rest.split(']').next()?,
        None if last.matches(':').count() == 1 => last.split(':').next()?,
        None => last,
    };
    bare.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_hold_what_they_say() {
        let block = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(block.contains(ip("10.1.200.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(block.contains(ip("::ffff:10.1.0.9")));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(!Cidr::parse("::/0").unwrap().contains(ip("1.2.3.4")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(
            Cidr::parse("::ffff:127.0.0.0/104")
                .unwrap()
                .contains(ip("127.9.9.9"))
        );
        assert!(
            Cidr::parse("::ffff:0:0/96")
                .unwrap()
                .contains(ip("10.0.0.1"))
        );
        for bad in [
            "10.0.0.0/33",
            "::1/129",
            "10.0.0.0/",
            "10.0.0.0/08",
            "example.com",
            "1.2.3.4/x",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn v1_headers() {
        let header = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            proxy_header(header),
            ProxyHeader::Present {
                client: Some(ip("192.0.2.7")),
                len: 41
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n";
        assert!(
            matches!(proxy_header(v6), ProxyHeader::Present { client: Some(a), .. } if a == ip("2001:db8::7"))
        );
        assert!(matches!(
            proxy_header(b"PROXY UNKNOWN\r\n"),
            ProxyHeader::Present {
                client: None,
                len: 15
            }
        ));
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 056 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2",
            b"PROX",
            b"PROXY TCP4 192.0.2.7  10.0.0.1 1 2\r\n",
        ] {
            assert_eq!(
                proxy_header(bad),
                ProxyHeader::Bad,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200], b"\r\n"].concat();
        assert_eq!(proxy_header(&long), ProxyHeader::Bad);
        assert_eq!(proxy_header(b"GET / HTTP/1.1\r\n"), ProxyHeader::Absent);
        assert_eq!(proxy_header(b"P"), ProxyHeader::Bad);
    }

    #[test]
    fn v2_headers() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 7, 10, 0, 0, 1, 0xdc, 0x04, 1, 187,
        ]);
        header.extend_from_slice(b"GET /");
        assert_eq!(
            proxy_header(&header),
            ProxyHeader::Present {
                client: Some(ip("192.0.2.7")),
                len: 28
            }
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            proxy_header(&local),
            ProxyHeader::Present {
                client: None,
                len: 16
            }
        );
        let mut v6 = V2_SIGNATURE.to_vec();
        v6.extend_from_slice(&[0x21, 0x21, 0, 36]);
        v6.extend_from_slice(&ip6_octets("2001:db8::7"));
        v6.extend_from_slice(&[0; 20]);
        assert!(
            matches!(proxy_header(&v6), ProxyHeader::Present { client: Some(a), len: 52 } if a == ip("2001:db8::7"))
        );
        // Cut short, a wrong version, an address block too short, too long.
        assert_eq!(proxy_header(&header[..20]), ProxyHeader::Bad);
        let mut wrong = header.clone();
        wrong[12] = 0x11;
        assert_eq!(proxy_header(&wrong), ProxyHeader::Bad);
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(proxy_header(&short), ProxyHeader::Bad);
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        huge.resize(16 + 0xffff, 0);
        assert_eq!(proxy_header(&huge), ProxyHeader::Bad);
    }

    fn ip6_octets(text: &str) -> [u8; 16] {
        text.parse::<Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn the_last_forwarded_hop_counts() {
        let headers = [
            httparse::Header {
                name: "X-Forwarded-For",
                value: b"203.0.113.9",
            },
            httparse::Header {
                name: "x-forwarded-for",
                value: b"198.51.100.1, 192.0.2.44",
            },
        ];
        assert_eq!(forwarded_for(&headers), Some(ip("192.0.2.44")));
        let ported = [httparse::Header {
            name: "X-Forwarded-For",
            value: b"192.0.2.1:5555, [2001:db8::1]:80",
        }];
        assert_eq!(forwarded_for(&ported), Some(ip("2001:db8::1")));
        let junk = [httparse::Header {
            name: "X-Forwarded-For",
            value: b"1.2.3.4, unknown",
        }];
        assert_eq!(forwarded_for(&junk), None);
        assert_eq!(forwarded_for(&[]), None);
    }
}
