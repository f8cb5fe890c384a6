//! A network namespace joined to the test's by a veth pair, for network
//! faults with real processes (issue 16's isolation round): a broker
//! started in it ([`Netns::wrap`]) can be cut off from every other process
//! ([`Netns::isolate`]) while the test still reaches it from inside
//! ([`Netns::enter`]). Needs root (`ip netns`); made and removed by the
//! test.

use std::process::Command;

/// One namespace `sluice-<pid>-<k>` with the address `10.213.<n>.2`,
/// reached from the test's namespace through `10.213.<n>.1` (a /24 on a
/// veth pair, `n` one no address of this host is in).
pub struct Netns {
    name: String,
    inner_link: String,
    host_link: String,
    /// What [`Netns::create`] made, which is all that Drop removes.
    made_netns: bool,
    made_link: bool,
    /// The address of the test's end of the pair (bind other nodes here so
    /// that the namespace reaches them).
    pub host_ip: String,
    /// The address inside the namespace.
    pub inner_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    ip_output(args).map(drop)
}

fn ip_output(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("`ip` cannot run: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Remove the namespaces earlier test processes made and could not remove
/// (killed): `sluice-<pid>-<k>` whose process is gone. Deleting one
/// deletes its veth pair too.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("sluice-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Netns {
    /// Make the namespace and its link (up); why not where it cannot be
    /// made (not root, no `ip`).
    pub fn create() -> Result<Netns, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static MADE: AtomicU32 = AtomicU32::new(0);
        sweep_stale();
        let pid = std::process::id();
        let k = MADE.fetch_add(1, Ordering::Relaxed) % 100;
        // A subnet no address of this host is in.
        let n = (0..230)
            .map(|step| (pid + step) % 230 + 20)
            .find(|n| {
                ip_output(&["-o", "addr", "show", "to", &format!("10.213.{n}.0/24")])
                    .is_ok_and(|listed| listed.trim().is_empty())
            })
            .ok_or("no free 10.213.n.0/24 subnet")?;
        let mut netns = Netns {
            name: format!("sluice-{pid}-{k}"),
            inner_link: format!("sl{k}{}n", pid % 100_000),
            host_link: format!("sl{k}{}h", pid % 100_000),
            made_netns: false,
            made_link: false,
            host_ip: format!("10.213.{n}.1"),
            inner_ip: format!("10.213.{n}.2"),
        };
        // An early return drops `netns`, which removes what was made.
        ip(&["netns", "add", &netns.name])?;
        netns.made_netns = true;
        ip(&[
            "link",
            "add",
            &netns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &netns.inner_link,
        ])?;
        netns.made_link = true;
        ip(&["link", "set", &netns.inner_link, "netns", &netns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", netns.host_ip),
            "dev",
            &netns.host_link,
        ])?;
        ip(&["link", "set", &netns.host_link, "up"])?;
        netns.inside(&[
            "addr",
            "add",
            &format!("{}/24", netns.inner_ip),
            "dev",
            &netns.inner_link,
        ])?;
        netns.inside(&["link", "set", "lo", "up"])?;
        netns.inside(&["link", "set", &netns.inner_link, "up"])?;
        Ok(netns)
    }

    fn inside(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Cut the namespace off: its end of the link goes down, so nothing
    /// leaves or enters it (its processes get "network unreachable", their
    /// peers' packets are dropped); processes inside still reach each
    /// other and [`Netns::enter`] still reaches them.
    pub fn isolate(&self) {
        self.inside(&["link", "set", &self.inner_link, "down"])
            .expect("the namespace's link goes down");
    }

    /// Undo [`Netns::isolate`]: the link and its route come back.
    pub fn heal(&self) {
        self.inside(&["link", "set", &self.inner_link, "up"])
            .expect("the namespace's link comes up");
    }

    /// `command` run inside the namespace (`ip netns exec`, which execs
    /// it: the child's pid is the command's).
    pub fn wrap(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.name])
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        wrapped
    }

    /// Run `work` on a thread inside the namespace: the sockets it opens
    /// are there (and keep working from any thread afterwards).
    pub fn enter<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    use std::os::fd::AsRawFd;
                    let file = std::fs::File::open(&path).expect("the namespace exists");
                    // SAFETY: setns on a valid descriptor of a network
                    // namespace; it changes only this thread's namespace.
                    let joined = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
                    work()
                })
                .join()
                .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.made_link {
            let _ = ip(&["link", "del", &self.host_link]);
        }
        if self.made_netns {
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}
