//! Container networking over rtnetlink, synchronously and without shelling out (`ip` costs
//! 25–55 ms a call, a netlink message microseconds): the host bridge, a veth pair per NIC
//! whose container end is created directly inside the container's network namespace, and the
//! container-side addresses and routes, configured from inside before init runs.

use crate::error::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_ADDRESS: u16 = 1;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_BRIDGE: u8 = 7;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// One NIC of a container, bridged to a host bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Name inside the container (`eth0`).
    pub name: String,
    /// Host end of the veth pair.
    pub host_name: String,
    /// The host bridge.
    pub bridge: String,
    /// MAC address of the container end.
    pub hwaddr: [u8; 6],
    /// IPv4 address and prefix inside the container.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// MTU (the bridge's).
    pub mtu: u32,
}

/// A netlink route socket (in the network namespace of the thread that opens it).
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A message under construction.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, header: &[u8]) -> Msg {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(header);
        buf.resize(align(buf.len()), 0);
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    /// A message that asks for no answer (a batch's begin or end).
    fn bare(kind: u16, header: &[u8]) -> Msg {
        let mut m = Msg::new(kind, 0, header);
        m.buf[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        m
    }

    /// Writes the length and the sequence number.
    fn seal(&mut self, seq: u32) {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v)
    }

    fn u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    fn begin(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self
    }

    fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    fn end(&mut self) -> &mut Self {
        if let Some(at) = self.nests.pop() {
            let len = (self.buf.len() - at) as u16;
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }
}

/// nfgenmsg: family, version 0, resource id (big-endian).
fn nfgenmsg(family: u8, res_id: u8) -> Vec<u8> {
    vec![family, 0, 0, res_id]
}

/// A set element that was not there is what removing it wanted.
fn absent(e: Error) -> Result<()> {
    match &e {
        Error::Os { source, .. } if source.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        _ => Err(e),
    }
}

/// ifinfomsg: family, type, index, flags, change.
fn ifinfo(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut v = vec![0u8; 16];
    v[0] = libc::AF_UNSPEC as u8;
    v[4..8].copy_from_slice(&index.to_ne_bytes());
    v[8..12].copy_from_slice(&flags.to_ne_bytes());
    v[12..16].copy_from_slice(&change.to_ne_bytes());
    v
}

impl Netlink {
    /// Opens a route socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink> {
        // SAFETY: plain syscall.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(Error::os(
                "open a netlink socket",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Netlink {
            // SAFETY: fresh fd.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
        })
    }

    /// Opens a netfilter socket (nftables) in the calling thread's network namespace.
    pub fn open_netfilter() -> Result<Netlink> {
        // SAFETY: plain syscall.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(Error::os(
                "open a netfilter netlink socket",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // an answer that never comes must not hang a start
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a valid timeval.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Netlink { fd, seq: 0 })
    }

    /// Adds (`add`) or deletes the element `key` of nftables set `set` in bridge table `table`,
    /// as a batch of its own (nftables takes changes only in batches). Adding an element that
    /// is there is no error; deleting one that is not is ENOENT.
    pub fn set_element(&mut self, table: &str, set: &str, key: &[u8], add: bool) -> Result<()> {
        let what = format!(
            "{} element of nftables set {table}/{set}",
            if add { "add an" } else { "delete an" }
        );
        let kind = (NFNL_SUBSYS_NFTABLES << 8)
            | if add {
                NFT_MSG_NEWSETELEM
            } else {
                NFT_MSG_DELSETELEM
            };
        let mut m = Msg::new(
            kind,
            if add { NLM_F_CREATE } else { 0 },
            &nfgenmsg(NFPROTO_BRIDGE, 0),
        );
        m.str(NFTA_SET_ELEM_LIST_TABLE, table)
            .str(NFTA_SET_ELEM_LIST_SET, set);
        m.begin(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED)
            .begin(NFTA_LIST_ELEM | NLA_F_NESTED)
            .begin(NFTA_SET_ELEM_KEY | NLA_F_NESTED);
        m.attr(NFTA_DATA_VALUE, key).end().end().end();
        // the batch: begin, the message, end; only the message asks for an answer
        let mut begin = Msg::bare(
            NFNL_MSG_BATCH_BEGIN,
            &nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES as u8),
        );
        let mut end = Msg::bare(
            NFNL_MSG_BATCH_END,
            &nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES as u8),
        );
        self.seq += 1;
        begin.seal(self.seq);
        self.seq += 1;
        m.seal(self.seq);
        end.seal(self.seq + 1);
        let mut buf = begin.buf;
        buf.extend_from_slice(&m.buf);
        buf.extend_from_slice(&end.buf);
        let r = self.exchange(&buf, &what);
        self.seq += 1;
        r
    }

    /// Sends `m` and waits for its acknowledgement.
    fn call(&mut self, m: &mut Msg, what: &str) -> Result<()> {
        self.seq += 1;
        m.seal(self.seq);
        self.exchange(&m.buf, what)
    }

    /// Sends `buf` (one or more sealed messages) and waits for the acknowledgement of the one
    /// numbered `self.seq`.
    fn exchange(&mut self, out: &[u8], what: &str) -> Result<()> {
        self.drain();
        // SAFETY: sending our buffer on our socket (to the kernel: zeroed sockaddr_nl).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), out.as_ptr().cast(), out.len(), 0) };
        if n < 0 {
            return Err(Error::os(what.to_string(), std::io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: receiving into our buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(Error::os(what.to_string(), std::io::Error::last_os_error()));
            }
            let mut off = 0usize;
            while off + 16 <= n as usize {
                let mlen = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let seq =
                    u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
                if mlen < 16 {
                    return Err(Error::Protocol(format!("{what}: short netlink message")));
                }
                if kind == NLMSG_ERROR && off + 20 <= n as usize {
                    let code = i32::from_ne_bytes([
                        buf[off + 16],
                        buf[off + 17],
                        buf[off + 18],
                        buf[off + 19],
                    ]);
                    // an error answers any message of ours (a batch's begin or end included)
                    if code != 0 {
                        return Err(Error::os(
                            what.to_string(),
                            std::io::Error::from_raw_os_error(-code),
                        ));
                    }
                    if seq == self.seq {
                        return Ok(());
                    }
                }
                off += align(mlen);
            }
        }
    }

    /// Drops what an earlier exchange left unread (the answers to a batch's other messages
    /// after an error), so that a socket kept open reads only answers to what it sends next.
    fn drain(&mut self) {
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: receiving into our buffer, without waiting.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n <= 0 {
                return;
            }
        }
    }

    /// The index of interface `name`, if it exists.
    pub fn index(&mut self, name: &str) -> Option<i32> {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: valid C string.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        (i > 0).then_some(i as i32)
    }

    /// Creates bridge `name` (idempotent) with `addr/prefix` and brings it up.
    pub fn ensure_bridge(&mut self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<i32> {
        if self.index(name).is_none() {
            let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifinfo(0, 0, 0));
            m.str(IFLA_IFNAME, name)
                .begin(IFLA_LINKINFO)
                .str(IFLA_INFO_KIND, "bridge")
                .end();
            match self.call(&mut m, &format!("create bridge {name}")) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        let index = self
            .index(name)
            .ok_or_else(|| Error::Protocol(format!("bridge {name} vanished")))?;
        match self.add_address(index, addr, prefix) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        self.set_up(index, &format!("bring up {name}"))?;
        Ok(index)
    }

    /// Brings interface `name` up.
    pub fn up(&mut self, name: &str) -> Result<()> {
        let index = self
            .index(name)
            .ok_or_else(|| Error::Protocol(format!("no interface {name}")))?;
        self.set_up(index, &format!("bring up {name}"))
    }

    fn set_up(&mut self, index: i32, what: &str) -> Result<()> {
        let mut m = Msg::new(
            RTM_NEWLINK,
            0,
            &ifinfo(index, libc::IFF_UP as u32, libc::IFF_UP as u32),
        );
        self.call(&mut m, what)
    }

    /// Adds an IPv4 address to interface `index`.
    pub fn add_address(&mut self, index: i32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut hdr = vec![0u8; 8];
        hdr[0] = libc::AF_INET as u8;
        hdr[1] = prefix;
        hdr[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &hdr);
        m.attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        self.call(&mut m, &format!("add address {addr}/{prefix}"))
    }

    /// Creates the veth pair of `nic`: the host end attached to its bridge and up, the other end
    /// created directly in the network namespace of process `pid`.
    pub fn add_veth(&mut self, nic: &Nic, pid: libc::pid_t) -> Result<()> {
        let bridge = self
            .index(&nic.bridge)
            .ok_or_else(|| Error::Invalid(format!("bridge {} does not exist", nic.bridge)))?;
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifinfo(0, 0, 0));
        m.str(IFLA_IFNAME, &nic.host_name)
            .u32(IFLA_MASTER, bridge as u32);
        if nic.mtu > 0 {
            m.u32(IFLA_MTU, nic.mtu);
        }
        m.begin(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "veth")
            .begin(IFLA_INFO_DATA)
            .begin(VETH_INFO_PEER);
        m.raw(&ifinfo(0, 0, 0))
            .str(IFLA_IFNAME, &nic.name)
            .u32(IFLA_NET_NS_PID, pid as u32)
            .attr(IFLA_ADDRESS, &nic.hwaddr);
        if nic.mtu > 0 {
            m.u32(IFLA_MTU, nic.mtu);
        }
        m.end().end().end();
        // A leftover host end (a container that died uncleanly, or the previous run's network
        // namespace still being torn down by the kernel, which happens in the background and
        // holds the name for a while after init is reaped): replace it, or wait for it to go.
        let what = format!("create veth {}", nic.host_name);
        let mut tries = 0;
        loop {
            match self.call(&mut m, &what) {
                Err(e) if e.errno() == Some(libc::EEXIST) && tries < 200 => {
                    tries += 1;
                    self.delete(&nic.host_name)?;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                r => break r?,
            }
        }
        let host = self
            .index(&nic.host_name)
            .ok_or_else(|| Error::Protocol(format!("veth {} vanished", nic.host_name)))?;
        self.set_up(host, &format!("bring up {}", nic.host_name))
    }

    /// Takes interface `name` down and out of the way under a throwaway name (missing is
    /// fine): no packet crosses it any more, and its name is free at once. Far quicker than a
    /// delete, which waits for the kernel's RCU barrier (10–30 ms measured); a veth put aside
    /// like this goes with its peer's network namespace.
    pub fn set_aside(&mut self, name: &str) -> Result<()> {
        let Some(index) = self.index(name) else {
            return Ok(());
        };
        let mut m = Msg::new(RTM_NEWLINK, 0, &ifinfo(index, 0, libc::IFF_UP as u32));
        self.call(&mut m, &format!("take {name} down"))?;
        let mac = random_mac();
        let aside = format!(
            "vx{:02x}{:02x}{:02x}{}",
            mac[3],
            mac[4],
            mac[5],
            &name[name.len().saturating_sub(5)..]
        );
        let mut m = Msg::new(RTM_NEWLINK, 0, &ifinfo(index, 0, 0));
        m.str(IFLA_IFNAME, &aside);
        match self.call(&mut m, &format!("rename {name} to {aside}")) {
            // a clash of throwaway names: delete it the slow way
            Err(e) if e.errno() == Some(libc::EEXIST) => self.delete(name),
            r => r,
        }
    }

    /// Deletes interface `name` (missing is fine).
    pub fn delete(&mut self, name: &str) -> Result<()> {
        let Some(index) = self.index(name) else {
            return Ok(());
        };
        let mut m = Msg::new(17 /* RTM_DELLINK */, 0, &ifinfo(index, 0, 0));
        match self.call(&mut m, &format!("delete {name}")) {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            r => r,
        }
    }

    /// Inside the container's namespace: lo and the NIC up, its address and default route.
    pub fn configure_inside(&mut self, nic: &Nic) -> Result<()> {
        let index = self
            .index(&nic.name)
            .ok_or_else(|| Error::Protocol(format!("{} is missing in the container", nic.name)))?;
        if let Some((addr, prefix)) = nic.ipv4 {
            match self.add_address(index, addr, prefix) {
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                r => r?,
            }
        }
        self.set_up(index, &format!("bring up {}", nic.name))?;
        if let Some(gw) = nic.gateway {
            let mut hdr = vec![0u8; 12];
            hdr[0] = libc::AF_INET as u8;
            hdr[4] = libc::RT_TABLE_MAIN;
            hdr[5] = libc::RTPROT_BOOT;
            hdr[6] = libc::RT_SCOPE_UNIVERSE;
            hdr[7] = libc::RTN_UNICAST;
            let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &hdr);
            m.attr(RTA_GATEWAY, &gw.octets()).u32(RTA_OIF, index as u32);
            match self.call(&mut m, "add the default route") {
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                r => r?,
            }
        }
        Ok(())
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

/// Formats a MAC address.
pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// IPv4 networks routed on the host (from /proc/net/route), as (network, prefix).
pub fn host_routes() -> Vec<(Ipv4Addr, u8)> {
    let Ok(t) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            Some((
                Ipv4Addr::from(u32::from_be(dst)),
                u32::from_be(mask).count_ones() as u8,
            ))
        })
        .collect()
}

/// Whether two networks overlap.
pub fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let p = a.1.min(b.1);
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    (u32::from(a.0) & mask) == (u32::from(b.0) & mask)
}

/// The prefix of a new bridge's network: a /20 holds 4093 containers (one bridge takes at
/// most 1024 ports, so the addresses outlast the ports even for containers that are defined
/// but stopped, which keep their lease).
pub const BRIDGE_PREFIX: u8 = 20;

/// A /20 (`BRIDGE_PREFIX`) in 10.0.0.0/8 for a new bridge that overlaps no route of the host
/// (default route excepted) and none of `taken`.
pub fn pick_subnet(taken: &[(Ipv4Addr, u8)]) -> Option<(Ipv4Addr, u8)> {
    let routes: Vec<(Ipv4Addr, u8)> = host_routes()
        .into_iter()
        .filter(|r| r.1 > 0)
        .chain(taken.iter().copied())
        .collect();
    let step = 1u16 << (24 - BRIDGE_PREFIX);
    (0u16..=255)
        .map(|i| (77u16 + i * 7) % 256)
        .flat_map(|b| {
            (0u16..256)
                .step_by(step as usize)
                .map(move |c| Ipv4Addr::new(10, b as u8, c as u8, 0))
        })
        .map(|n| (n, BRIDGE_PREFIX))
        .find(|n| !routes.iter().any(|r| overlaps(*n, *r)))
}

/// Checks an interface name (1–15 bytes of `[A-Za-z0-9_.-]`).
pub fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid interface name {name:?} (1-15 characters of A-Z a-z 0-9 _ . -)"
        )))
    }
}

fn fnv1a(parts: &[&str]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= b'/' as u32;
            h = h.wrapping_mul(0x01000193);
        }
        for b in p.bytes() {
            h ^= b as u32;
            h = h.wrapping_mul(0x01000193);
        }
    }
    h
}

/// The host end of a container's `index`th NIC on `bridge`: stable for a container, short
/// enough for IFNAMSIZ, unlikely to clash (`vb` + 32-bit FNV-1a of bridge and name + the
/// index). The bridge is part of it so that two berth installations on one host (each with
/// its own bridge) never fight over a container name they share.
pub fn host_veth_name(bridge: &str, container: &str, index: usize) -> String {
    format!("vb{:08x}{index}", fnv1a(&[bridge, container]))
}

/// A random locally administered MAC in the 00:16:3e prefix LXD uses.
pub fn random_mac() -> [u8; 6] {
    let mut r = [0u8; 3];
    // SAFETY: getrandom into a valid buffer.
    let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    if n != 3 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        r = [(t >> 8) as u8, (t >> 16) as u8, (t >> 24) as u8];
    }
    [0x00, 0x16, 0x3e, r[0] & 0x7f, r[1], r[2]]
}

/// A MAC derived from a container name, for containers created before they had one recorded.
pub fn stable_mac(container: &str) -> [u8; 6] {
    let n = fnv1a(&[container]);
    [
        0x00,
        0x16,
        0x3e,
        ((n >> 16) & 0x7f) as u8,
        (n >> 8) as u8,
        n as u8,
    ]
}

/// The nftables table (bridge family) that keeps each container to its own addresses on
/// `bridge`: frames entering the bridge from a container's port must carry its MAC, ARP must
/// speak for its own MAC and IPv4 address (or 0.0.0.0, a probe), IPv4 must come from its
/// address, and VLAN tags are dropped; IPv6 is held to the MAC only (berth gives containers
/// no IPv6 address). One table per bridge, so that berth never touches another program's
/// rules. Its rules are fixed; what each port may use is in three sets (`ports`, `macs`,
/// `ip4s`) whose elements berthd adds and removes over netlink, microseconds a port.
pub fn guard_table(bridge: &str) -> String {
    format!("berth_{bridge}")
}

/// The nft script of the table's sets and rules (idempotent; one transaction, so that the
/// rules are never missing while it runs).
fn guard_ruleset(bridge: &str) -> String {
    let t = format!("bridge {}", guard_table(bridge));
    format!(
        "add table {t}\n\
         add set {t} ports {{ type ifname; }}\n\
         add set {t} macs {{ type ifname . ether_addr; }}\n\
         add set {t} ip4s {{ type ifname . ipv4_addr; }}\n\
         add chain {t} guard {{ type filter hook prerouting priority -200; policy accept; }}\n\
         flush chain {t} guard\n\
         add rule {t} guard iifname != @ports accept\n\
         add rule {t} guard ether type {{ 0x8100, 0x88a8 }} drop\n\
         add rule {t} guard iifname . ether saddr != @macs drop\n\
         add rule {t} guard iifname . arp saddr ether != @macs drop\n\
         add rule {t} guard arp saddr ip 0.0.0.0 accept\n\
         add rule {t} guard iifname . arp saddr ip != @ip4s drop\n\
         add rule {t} guard iifname . ip saddr != @ip4s drop\n"
    )
}

/// The set elements that hold port `port` to `guard`: (set, key) with keys laid out as the
/// kernel compares them (each part of a concatenation padded to 4 bytes; an interface name
/// is 16 bytes, NUL-padded). A port with no address gets no `ip4s` element: its IPv4 and ARP
/// (but probes) are dropped.
fn guard_elements(port: &str, guard: &Guard) -> Vec<(&'static str, Vec<u8>)> {
    let mut name = [0u8; 16];
    let n = port.len().min(15);
    name[..n].copy_from_slice(&port.as_bytes()[..n]);
    let mut mac = name.to_vec();
    mac.extend_from_slice(&guard.0);
    mac.extend_from_slice(&[0, 0]);
    let mut out = vec![("ports", name.to_vec()), ("macs", mac)];
    if let Some((ip, _)) = guard.1 {
        let mut k = name.to_vec();
        k.extend_from_slice(&ip.octets());
        out.push(("ip4s", k));
    }
    out
}

/// Runs `nft -f -` with `script`.
fn nft(script: &str, what: &str) -> Result<()> {
    use std::io::Write;
    // by its path: a berthd activated by dbus-daemon has no PATH, and nft is in /usr/sbin
    let prog = crate::storage::which("nft").unwrap_or_else(|| "nft".into());
    let mut child = std::process::Command::new(prog)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::os(format!("{what}: run nft (is nftables installed?)"), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .step(|| format!("{what}: write to nft"))?;
    }
    let out = child
        .wait_with_output()
        .step(|| format!("{what}: wait for nft"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(Error::Tool {
        tool: "nft".into(),
        status: out.status.to_string(),
        stderr: format!("{what}: {}", stderr.trim()),
    })
}

/// Persistent state of one bridge network: its subnet and the address of every container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct BridgeState {
    subnet: String,
    leases: std::collections::BTreeMap<String, Ipv4Addr>,
    /// What each guarded port is held to, so that its elements can be removed exactly.
    #[serde(default)]
    guards: std::collections::BTreeMap<String, Guard>,
}

/// What a port is held to: its container's MAC and address.
type Guard = ([u8; 6], Option<(Ipv4Addr, u8)>);

/// A host bridge berth owns and the IPv4 leases of its containers, kept in
/// `<dir>/<bridge>.json` so addresses survive daemon restarts and host reboots.
#[derive(Debug)]
pub struct BridgeNetwork {
    /// The bridge's name.
    pub bridge: String,
    /// Its network (a /20 when berth picked it; an older bridge keeps the /24 it had).
    pub subnet: (Ipv4Addr, u8),
    file: std::path::PathBuf,
    state: std::sync::Mutex<BridgeState>,
    /// Whether this process has (re)written the guard table's rules.
    ruleset: std::sync::Mutex<bool>,
    /// The netfilter socket the guards' set elements go through, kept open: closing one
    /// after a commit waits for nftables to free the commit's transactions (an RCU grace
    /// period, ~6 ms here), which a delete or a start would otherwise pay each time.
    netfilter: std::sync::Mutex<Option<Netlink>>,
}

impl BridgeNetwork {
    /// Loads (or picks, for a new bridge, a subnet that clashes with no host route) and creates
    /// the bridge with the subnet's first address. Idempotent.
    pub fn setup(dir: &std::path::Path, bridge: &str) -> Result<BridgeNetwork> {
        check_ifname(bridge)?;
        std::fs::create_dir_all(dir).step(|| format!("create {}", dir.display()))?;
        // root's alone, as everything under the state directory (also one made before)
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .step(|| format!("chmod {}", dir.display()))?;
        let file = dir.join(format!("{bridge}.json"));
        let mut state: BridgeState = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Protocol(format!("{}: {e}", file.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BridgeState::default(),
            Err(e) => return Err(Error::os(format!("read {}", file.display()), e)),
        };
        // daemons on one host (tests run several) must not pick the same free subnet at once
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/berth-bridges.lock")
            .step(|| "open /run/berth-bridges.lock")?;
        // SAFETY: flock on an fd we own; released when `lock` drops.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        let mut nl = Netlink::open()?;
        let parsed = parse_cidr(&state.subnet);
        let subnet = match parsed {
            Some(s) => s,
            None => {
                let s = pick_subnet(&[]).ok_or_else(|| {
                    Error::Invalid("no free /20 in 10.0.0.0/8 for the bridge".into())
                })?;
                state.subnet = format!("{}/{}", s.0, s.1);
                s
            }
        };
        let gw = gateway_of(subnet);
        if parsed.is_none() || nl.index(bridge).is_none() {
            // a fresh bridge must not shadow a route that appeared since the subnet was chosen
            if parsed.is_some()
                && host_routes()
                    .iter()
                    .any(|r| r.1 > 0 && overlaps(*r, subnet))
            {
                return Err(Error::Invalid(format!(
                    "the bridge network {} now overlaps a host route; remove {} to pick another",
                    state.subnet,
                    file.display()
                )));
            }
        }
        nl.ensure_bridge(bridge, gw, subnet.1)?;
        let net = BridgeNetwork {
            bridge: bridge.to_string(),
            subnet,
            file,
            state: std::sync::Mutex::new(state),
            ruleset: std::sync::Mutex::new(false),
            netfilter: std::sync::Mutex::new(None),
        };
        net.save(&net.state.lock().unwrap_or_else(|p| p.into_inner()))?;
        Ok(net)
    }

    fn save(&self, st: &BridgeState) -> Result<()> {
        let tmp = self.file.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(st).map_err(|e| Error::Protocol(e.to_string()))?;
        std::fs::write(&tmp, data).step(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.file).step(|| format!("rename {}", tmp.display()))
    }

    /// Runs `f` on the kept netfilter socket, opened on first use; a socket that failed is
    /// dropped so the next call starts on a fresh one.
    fn with_netfilter<T>(&self, f: impl FnOnce(&mut Netlink) -> Result<T>) -> Result<T> {
        let mut slot = self.netfilter.lock().unwrap_or_else(|p| p.into_inner());
        let nl = match slot.as_mut() {
            Some(nl) => nl,
            None => slot.insert(Netlink::open_netfilter()?),
        };
        let r = f(nl);
        if r.is_err() {
            *slot = None;
        }
        r
    }

    /// The gateway (the bridge's own address).
    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.subnet)
    }

    /// The address of `container`, allocating the lowest free one on first use.
    pub fn lease(&self, container: &str) -> Result<Ipv4Addr> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = st.leases.get(container) {
            return Ok(*a);
        }
        let base = u32::from(self.subnet.0);
        let size = 1u32 << (32 - self.subnet.1 as u32);
        let used: std::collections::HashSet<Ipv4Addr> = st.leases.values().copied().collect();
        let addr = (2..size - 1)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|a| !used.contains(a))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the bridge network {} has no free address",
                    st.subnet
                ))
            })?;
        st.leases.insert(container.to_string(), addr);
        self.save(&st)?;
        Ok(addr)
    }

    /// Holds the port of `nic` to its MAC and address (see [`guard_table`]) before the
    /// container can send on it: its set elements, added over netlink at every start (a
    /// reboot empties the sets; adding what is there is no error). The table's rules are
    /// written by `nft` once per berthd process, at its first guard.
    pub fn guard(&self, nic: &Nic) -> Result<()> {
        {
            let mut written = self.ruleset.lock().unwrap_or_else(|p| p.into_inner());
            if !*written {
                nft(
                    &guard_ruleset(&self.bridge),
                    &format!("write the guard rules of bridge {}", self.bridge),
                )?;
                *written = true;
            }
        }
        let want: Guard = (nic.hwaddr, nic.ipv4);
        let port = &nic.host_name;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let table = guard_table(&self.bridge);
        let old = st.guards.get(port).copied().filter(|old| *old != want);
        self.with_netfilter(|nl| {
            if let Some(old) = old {
                for (set, key) in guard_elements(port, &old) {
                    nl.set_element(&table, set, &key, false).or_else(absent)?;
                }
            }
            for (set, key) in guard_elements(port, &want) {
                match nl.set_element(&table, set, &key, true) {
                    // the table went (`nft flush ruleset` by a firewall reload): write it again
                    Err(e) if e.errno() == Some(libc::ENOENT) => {
                        nft(
                            &guard_ruleset(&self.bridge),
                            &format!("write the guard rules of bridge {} again", self.bridge),
                        )?;
                        nl.set_element(&table, set, &key, true)?;
                    }
                    r => r?,
                }
            }
            Ok(())
        })?;
        if st.guards.get(port) != Some(&want) {
            st.guards.insert(port.clone(), want);
            self.save(&st)?;
        }
        Ok(())
    }

    /// Removes the guard of `container`'s port (its NIC is gone for good).
    pub fn unguard(&self, container: &str) -> Result<()> {
        let port = host_veth_name(&self.bridge, container, 0);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(old) = st.guards.get(&port).copied() else {
            return Ok(());
        };
        let table = guard_table(&self.bridge);
        self.with_netfilter(|nl| {
            for (set, key) in guard_elements(&port, &old) {
                nl.set_element(&table, set, &key, false).or_else(absent)?;
            }
            Ok(())
        })?;
        st.guards.remove(&port);
        self.save(&st)
    }

    /// Forgets `container`'s address.
    pub fn release(&self, container: &str) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.leases.remove(container).is_some() {
            self.save(&st)?;
        }
        Ok(())
    }

    /// Records that `container` holds `addr` (a copy or a rename keeps its record's address
    /// only when it is free).
    pub fn claim(&self, container: &str, addr: Ipv4Addr) -> Result<bool> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.leases.get(container) == Some(&addr) {
            return Ok(true);
        }
        if st.leases.values().any(|a| *a == addr) || !overlaps((addr, 32), self.subnet) {
            return Ok(false);
        }
        st.leases.insert(container.to_string(), addr);
        self.save(&st)?;
        Ok(true)
    }

    /// The NIC `eth0` of `container` with address `addr` and MAC `hwaddr`.
    pub fn nic(&self, container: &str, addr: Ipv4Addr, hwaddr: [u8; 6]) -> Nic {
        Nic {
            name: "eth0".into(),
            host_name: host_veth_name(&self.bridge, container, 0),
            bridge: self.bridge.clone(),
            hwaddr,
            ipv4: Some((addr, self.subnet.1)),
            gateway: Some(self.gateway()),
            mtu: 0,
        }
    }
}

fn gateway_of(subnet: (Ipv4Addr, u8)) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.0) + 1)
}

/// Parses `a.b.c.d/n`.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok().filter(|p| (8..=30).contains(p))?;
    let a: Ipv4Addr = a.parse().ok()?;
    let mask = u32::MAX << (32 - p);
    Some((Ipv4Addr::from(u32::from(a) & mask), p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_held_to_its_mac_and_address() {
        let rules = guard_ruleset("berthbr0");
        for rule in [
            "guard iifname != @ports accept",
            "guard iifname . ether saddr != @macs drop",
            "guard iifname . arp saddr ether != @macs drop",
            "guard iifname . arp saddr ip != @ip4s drop",
            "guard iifname . ip saddr != @ip4s drop",
        ] {
            assert!(rules.contains(rule), "{rule} in\n{rules}");
        }
        assert!(
            rules.lines().all(|l| l.contains(" bridge berth_berthbr0")),
            "{rules}"
        );
        // keys as the kernel lays out a concatenation: 16 bytes of name, then 4-byte words
        let g: Guard = (
            [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03],
            Some((Ipv4Addr::new(10, 1, 0, 5), 20)),
        );
        let e = guard_elements("vb0123abcd0", &g);
        let mut name = b"vb0123abcd0".to_vec();
        name.resize(16, 0);
        assert_eq!(e[0], ("ports", name.clone()));
        assert_eq!(
            e[1],
            (
                "macs",
                [name.clone(), vec![0x00, 0x16, 0x3e, 0x01, 0x02, 0x03, 0, 0]].concat()
            )
        );
        assert_eq!(e[2], ("ip4s", [name, vec![10, 1, 0, 5]].concat()));
        assert_eq!(
            guard_elements("vb0123abcd0", &(g.0, None)).len(),
            2,
            "no address, no ip4s element"
        );
    }

    #[test]
    fn macs_and_overlaps() {
        let m = parse_mac("00:16:3e:aa:bb:0c").unwrap();
        assert_eq!(format_mac(&m), "00:16:3e:aa:bb:0c");
        assert!(parse_mac("00:16:3e:aa:bb").is_none());
        assert!(overlaps(
            (Ipv4Addr::new(10, 0, 0, 0), 8),
            (Ipv4Addr::new(10, 77, 0, 0), 24)
        ));
        assert!(!overlaps(
            (Ipv4Addr::new(10, 78, 0, 0), 24),
            (Ipv4Addr::new(10, 77, 0, 0), 24)
        ));
        let taken = (Ipv4Addr::new(10, 77, 0, 0), 24);
        let s = pick_subnet(&[taken]).unwrap();
        assert_eq!(s.1, BRIDGE_PREFIX);
        assert!(!overlaps(s, taken), "{s:?} overlaps {taken:?}");
        assert_eq!(
            u32::from(s.0) & !(u32::MAX << (32 - BRIDGE_PREFIX)),
            0,
            "{s:?} is not a network address"
        );
        assert_eq!(
            parse_cidr("10.1.2.3/24"),
            Some((Ipv4Addr::new(10, 1, 2, 0), 24))
        );
        assert_eq!(parse_cidr("10.1.2.3/33"), None);
        assert!(check_ifname("berthbr0").is_ok());
        assert!(check_ifname("a-very-long-name0").is_err());
        assert!(check_ifname("br/0").is_err());
        assert_eq!(host_veth_name("berthbr0", "c1", 0).len(), 11);
        assert_ne!(
            host_veth_name("berthbr0", "c1", 0),
            host_veth_name("berthbr0", "c2", 0)
        );
        assert_ne!(
            host_veth_name("berthbr0", "c1", 0),
            host_veth_name("bt1", "c1", 0),
            "two installations, one name"
        );
        assert_eq!(stable_mac("c1"), stable_mac("c1"));
        assert_eq!(random_mac()[..3], [0, 0x16, 0x3e]);
    }

    #[test]
    fn messages_are_aligned_and_nested() {
        let mut m = Msg::new(RTM_NEWLINK, 0, &ifinfo(0, 0, 0));
        m.str(IFLA_IFNAME, "abc")
            .begin(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "veth")
            .end();
        assert_eq!(m.buf.len() % 4, 0);
        // the nest's length covers its header and the kind attribute
        let at = 32 + 8; // header, ifinfo, "abc\0" attribute
        assert_eq!(
            u16::from_ne_bytes([m.buf[at], m.buf[at + 1]]) as usize,
            4 + 4 + 8
        );
    }
}
