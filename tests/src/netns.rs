//! Hosts for real: each test host is a network namespace with its own address, joined to
//! this machine by a veth pair on one bridge, so traffic between a test's nats-servers
//! and nodes crosses interfaces, and a host can be cut off (its link down) and healed.
//! Made by the test and removed when dropped; where the kernel or the user may not make
//! namespaces, [`Lan::new`] says why and the test skips with that message.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip <args…>`; its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A bridge on this machine with an address in a /24 of its own; hosts join it.
pub struct Lan {
    id: String,
    bridge: String,
    subnet: String,
    hosts: u8,
}

impl Lan {
    /// A new bridge `blbr<id>` holding `10.<a>.<b>.254/24`. `Err(why)` where namespaces or
    /// bridges cannot be made here (not root, or a kernel that forbids them).
    pub fn new() -> Result<Lan, String> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let id = format!("{}{}", pid % 10_000, n % 100);
        let subnet = format!("10.{}.{}", 200 + pid % 50, (pid / 50 + n) % 250);
        let bridge = format!("blbr{id}");
        let probe = format!("blprobe{id}");
        ip(&["netns", "add", &probe])
            .and_then(|()| ip(&["netns", "del", &probe]))
            .map_err(|e| format!("network namespaces cannot be made here ({e}); these tests need root"))?;
        ip(&["link", "add", "name", &bridge, "type", "bridge"])?;
        let lan = Lan { id, bridge, subnet, hosts: 0 };
        ip(&["addr", "add", &format!("{}.254/24", lan.subnet), "dev", &lan.bridge])?;
        ip(&["link", "set", &lan.bridge, "up"])?;
        Ok(lan)
    }

    /// A new host on this LAN: a namespace with `eth0` at the next address and `lo` up.
    pub fn host(&mut self, name: &str) -> Host {
        self.hosts += 1;
        let k = self.hosts;
        let host = Host {
            ns: format!("bl{}-{name}", self.id),
            ip: format!("{}.{k}", self.subnet),
            peer: format!("bl{}h{k}", self.id),
        };
        let inside = format!("bl{}n{k}", self.id);
        let made = ip(&["netns", "add", &host.ns])
            .and_then(|()| ip(&["link", "add", &host.peer, "type", "veth", "peer", "name", &inside]))
            .and_then(|()| ip(&["link", "set", &inside, "netns", &host.ns]))
            .and_then(|()| ip(&["-n", &host.ns, "link", "set", &inside, "name", "eth0"]))
            .and_then(|()| ip(&["-n", &host.ns, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"]))
            .and_then(|()| ip(&["-n", &host.ns, "link", "set", "eth0", "up"]))
            .and_then(|()| ip(&["-n", &host.ns, "link", "set", "lo", "up"]))
            .and_then(|()| ip(&["link", "set", &host.peer, "master", &self.bridge]))
            .and_then(|()| ip(&["link", "set", &host.peer, "up"]));
        if let Err(e) = made {
            panic!("host {name} not made: {e}");
        }
        host
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// A host: a network namespace with one address.
pub struct Host {
    ns: String,
    ip: String,
    /// This machine's end of its veth pair (on the bridge).
    peer: String,
}

impl Host {
    /// Its address.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The command that runs a program on this host: `ip netns exec <ns>`.
    pub fn wrapper(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns].map(String::from).to_vec()
    }

    /// Cuts the host off: its link goes down; its processes run on, their connections
    /// open as far as they know, and nothing reaches them or comes from them.
    pub fn cut(&self) {
        ip(&["link", "set", &self.peer, "down"]).expect("link down");
    }

    /// Brings its link back.
    pub fn heal(&self) {
        ip(&["link", "set", &self.peer, "up"]).expect("link up");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Its processes are the test's to stop; the namespace and its veth pair go here.
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// The `Lan`, or skips the calling test with the reason it cannot run here.
#[macro_export]
macro_rules! lan_or_skip {
    () => {
        match $crate::netns::Lan::new() {
            Ok(lan) => lan,
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return;
            }
        }
    };
}
