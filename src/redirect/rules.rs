//! The capture ruleset as text for `iptables-restore --noflush` (and `ip6tables-restore`):
//! pure functions of the options and of the table's current state, so the exact rules are
//! unit-tested without touching a kernel.
//!
//! Everything lives in four chains of the nat table that Spoke owns. Declaring a chain in
//! the restore input flushes it, so a second run replaces the rules instead of adding them;
//! the one jump from each built-in chain is added only when the table does not have it yet.

use std::fmt::Write as _;
use std::net::IpAddr;

/// PREROUTING jumps here: which inbound connections are captured.
pub const INBOUND: &str = "SPOKE_INBOUND";
/// Redirects to the inbound capture port.
pub const IN_REDIRECT: &str = "SPOKE_IN_REDIRECT";
/// OUTPUT jumps here: which outbound connections are captured.
pub const OUTPUT: &str = "SPOKE_OUTPUT";
/// Redirects to the outbound capture port.
pub const REDIRECT: &str = "SPOKE_REDIRECT";
/// Spoke's chains, in the order they are declared and removed.
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];

/// The built-in chains and the jump each one gets.
const JUMPS: [(&str, &str); 2] = [("PREROUTING", INBOUND), ("OUTPUT", OUTPUT)];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The restore command of this family.
    pub fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    pub fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    /// `IPv4` or `IPv6`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// A port list flag: `*` (every port), empty (none), or `80,8080`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    All,
    Some(Vec<u16>),
}

impl Ports {
    pub fn parse(s: &str) -> Result<Ports, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Ports::All);
        }
        port_list(s).map(Ports::Some)
    }
}

/// A comma-separated port list flag (a type of its own, so clap takes it as one value).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortList(pub Vec<u16>);

impl PortList {
    pub fn parse(s: &str) -> Result<PortList, String> {
        port_list(s).map(PortList)
    }
}

/// A comma-separated CIDR list flag.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CidrList(pub Vec<Cidr>);

impl CidrList {
    pub fn parse(s: &str) -> Result<CidrList, String> {
        cidr_list(s).map(CidrList)
    }
}

/// `80,8080` (empty: none).
pub fn port_list(s: &str) -> Result<Vec<u16>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{p:?} is not a port (1-65535)")),
        })
        .collect()
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix must be 0-{max}")),
            },
        };
        Ok(Cidr { ip, prefix })
    }

    fn family(&self) -> Family {
        if self.ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// `a,b,c` of CIDRs (empty: none).
pub fn cidr_list(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(Cidr::parse)
        .collect()
}

/// What is captured and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub inbound_capture_port: u16,
    pub outbound_capture_port: u16,
    pub inbound_ports: Ports,
    pub exclude_inbound_ports: Vec<u16>,
    pub outbound_ports: Ports,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

/// What an `iptables-save -t nat` said about Spoke's rules.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// Spoke chains that exist.
    pub chains: Vec<String>,
    /// The rules (as saved, `-A ...`) that jump from a built-in chain to a Spoke chain.
    pub jumps: Vec<String>,
}

impl State {
    /// Reads the output of `iptables-save -t nat`.
    pub fn parse(save: &str) -> State {
        let mut st = State::default();
        for line in save.lines() {
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if CHAINS.contains(&name) {
                    st.chains.push(name.to_string());
                }
            } else if line.starts_with("-A ") {
                let mut words = line.split_whitespace().skip(1);
                let chain = words.next().unwrap_or("");
                let target = line.rsplit_once("-j ").map(|(_, t)| t.trim()).unwrap_or("");
                if !CHAINS.contains(&chain) && CHAINS.contains(&target) {
                    st.jumps.push(line.to_string());
                }
            }
        }
        st
    }

    fn has_jump(&self, from: &str, to: &str) -> bool {
        self.jumps
            .iter()
            .any(|j| j.starts_with(&format!("-A {from} ")) && j.ends_with(&format!("-j {to}")))
    }
}

/// The restore input that installs (or replaces) the capture rules of one family.
pub fn install(plan: &Plan, family: Family, state: &State) -> String {
    let mut out = String::from("*nat\n");
    for c in CHAINS {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let mut rule = |chain: &str, spec: &str| {
        let _ = writeln!(out, "-A {chain} {spec}");
    };
    let to = |port: u16| format!("-p tcp -j REDIRECT --to-ports {port}");
    rule(IN_REDIRECT, &to(plan.inbound_capture_port));
    rule(REDIRECT, &to(plan.outbound_capture_port));

    // Inbound: the capture ports themselves are never captured (that would loop).
    let mut skip = vec![plan.outbound_capture_port, plan.inbound_capture_port];
    skip.extend(&plan.exclude_inbound_ports);
    dedup(&mut skip);
    if plan.inbound_ports != Ports::Some(vec![]) {
        for p in &skip {
            rule(INBOUND, &format!("-p tcp --dport {p} -j RETURN"));
        }
    }
    capture(&mut rule, INBOUND, IN_REDIRECT, &plan.inbound_ports);

    // Outbound: never the proxy's own connections (they are what it forwards), never
    // loopback (the proxy's own listeners and the app's local calls).
    rule(
        OUTPUT,
        &format!("-m owner --uid-owner {} -j RETURN", plan.proxy_uid),
    );
    rule(
        OUTPUT,
        &format!("-m owner --gid-owner {} -j RETURN", plan.proxy_gid),
    );
    rule(OUTPUT, &format!("-d {} -j RETURN", family.loopback()));
    for c in plan
        .exclude_outbound_cidrs
        .iter()
        .filter(|c| c.family() == family)
    {
        rule(OUTPUT, &format!("-d {}/{} -j RETURN", c.ip, c.prefix));
    }
    let mut ports = plan.exclude_outbound_ports.clone();
    dedup(&mut ports);
    for p in ports {
        rule(OUTPUT, &format!("-p tcp --dport {p} -j RETURN"));
    }
    capture(&mut rule, OUTPUT, REDIRECT, &plan.outbound_ports);

    for (from, to) in JUMPS {
        if !state.has_jump(from, to) {
            rule(from, &format!("-p tcp -j {to}"));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// The rules that send the chosen ports to the redirect chain.
fn capture(rule: &mut impl FnMut(&str, &str), chain: &str, to: &str, ports: &Ports) {
    match ports {
        Ports::All => rule(chain, &format!("-p tcp -j {to}")),
        Ports::Some(list) => {
            let mut list = list.clone();
            dedup(&mut list);
            for p in list {
                rule(chain, &format!("-p tcp --dport {p} -j {to}"));
            }
        }
    }
}

fn dedup(v: &mut Vec<u16>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|p| seen.insert(*p));
}

/// The restore input that removes everything `install` added, or `None` when there is
/// nothing to remove.
pub fn remove(state: &State) -> Option<String> {
    if state.chains.is_empty() && state.jumps.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for j in &state.jumps {
        let _ = writeln!(out, "-D{}", &j[2..]);
    }
    // Flushed first, then deleted: a chain still referenced cannot be deleted.
    for c in CHAINS
        .iter()
        .filter(|c| state.chains.iter().any(|s| s == *c))
    {
        let _ = writeln!(out, "-F {c}");
    }
    for c in CHAINS
        .iter()
        .filter(|c| state.chains.iter().any(|s| s == *c))
    {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

#[cfg(test)]
mod tests;
