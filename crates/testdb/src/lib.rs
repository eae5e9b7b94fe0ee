//! A throwaway PostgreSQL cluster on loopback for the tests that need a real database.
//!
//! The first call to [`cluster`] in a test process runs `initdb` into a fresh directory under
//! the system's temp dir (as the `postgres` user when the tests run as root: `initdb` refuses
//! root), starts the server with `pg_ctl` on a free 127.0.0.1 port, and leaves a watchdog that
//! stops the server and removes the directory once the test process has exited. Each test then
//! takes a database of its own with [`Cluster::fresh_database`], so tests never see each other's
//! rows. A test that kills or restarts the database takes a cluster of its own instead
//! ([`Cluster::start_private`], with [`Cluster::kill`], [`Cluster::restart`],
//! [`Cluster::pause`] and [`Cluster::resume`]), removed when dropped. Binaries come from `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`;
//! `scripts/test` installs Debian's `postgresql` when neither exists.

#![allow(clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    port: u16,
    bindir: PathBuf,
    /// Where the TLS cluster's CA certificates are (the cluster's directory).
    dir: PathBuf,
    /// Set for a cluster of one test's own ([`Cluster::start_private`]).
    private: Option<Private>,
}

/// What a private cluster needs to be killed, restarted and removed.
#[derive(Debug)]
struct Private {
    root: bool,
    data: PathBuf,
}

/// A cluster shared by the test process: never killed or restarted; its watchdog removes it
/// once the process is gone.
fn shared(mut cluster: Cluster) -> Cluster {
    cluster.private = None;
    cluster
}

/// The test process's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| shared(start(None)))
}

/// A second cluster of the test process, started on first use, that accepts TCP connections
/// over TLS only (`hostssl` in `pg_hba.conf`): its certificate, for `localhost` and
/// `127.0.0.1`, is signed by a CA made for the test ([`Cluster::ca_file`]);
/// [`Cluster::wrong_ca_file`] is another CA that signed nothing of it.
pub fn tls_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| shared(start(Some(make_certificates))))
}

/// The CA that signs the TLS cluster's certificate, another CA, and the certificate and its
/// key, written into `dir`; returns the server's extra options.
fn make_certificates(dir: &Path, root: bool) -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca = |name: &str| {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        (cert.pem(), Issuer::new(params, key))
    };
    let (ca_pem, issuer) = ca("portcullis test CA");
    let (wrong_pem, _) = ca("portcullis other CA");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "portcullis test database");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let write = |name: &str, text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a certificate file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        if root {
            let st = Command::new("chown")
                .arg("postgres")
                .arg(&path)
                .status()
                .expect("chown");
            assert!(st.success(), "chown {name}");
        }
        path
    };
    write("ca.pem", &ca_pem, 0o644);
    write("wrong-ca.pem", &wrong_pem, 0o644);
    let crt = write("server.crt", &cert.pem(), 0o644);
    let key = write("server.key", &key.serialize_pem(), 0o600);
    format!(
        "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        crt.display(),
        key.display()
    )
}

impl Cluster {
    /// Starts a cluster of the caller's own (for a test that stops or kills the database, so
    /// that no other test is disturbed): like the shared one, on its own directory and port.
    /// It is stopped and removed when dropped (and by a watchdog if the test process dies).
    pub fn start_private() -> Cluster {
        start(None)
    }

    /// SIGKILLs the postmaster of a private cluster, as a crash would, and returns once every
    /// server process of the cluster has exited: the backends end on their own when they see
    /// the postmaster gone; any still running after a few seconds are SIGKILLed too.
    pub fn kill(&self) {
        let p = self
            .private
            .as_ref()
            .expect("kill() needs Cluster::start_private()");
        let pid = std::fs::read_to_string(p.data.join("postmaster.pid"))
            .expect("postmaster.pid")
            .lines()
            .next()
            .expect("postmaster pid line")
            .trim()
            .to_owned();
        let st = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -KILL {pid}");
        for round in 0..200 {
            let left = processes_in(&p.data);
            if left.is_empty() {
                return;
            }
            if round == 100 {
                for pid in left {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the cluster's processes did not exit after SIGKILL");
    }

    /// Stops every server process of a private cluster (SIGSTOP) without closing anything: a
    /// database that stops answering, as a hung server or a network path that drops packets
    /// looks to its clients. [`Cluster::resume`] lets it go on.
    pub fn pause(&self) {
        self.signal_all("STOP");
    }

    /// Lets a paused private cluster go on (SIGCONT).
    pub fn resume(&self) {
        self.signal_all("CONT");
    }

    fn signal_all(&self, signal: &str) {
        let p = self
            .private
            .as_ref()
            .expect("pause() and resume() need Cluster::start_private()");
        let pids = processes_in(&p.data);
        assert!(!pids.is_empty(), "the cluster is not running");
        for pid in pids {
            // A backend may have exited in between: not an error.
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Starts a killed private cluster again on the same data directory and port (crash
    /// recovery runs first; this returns when it accepts connections).
    pub fn restart(&self) {
        let p = self
            .private
            .as_ref()
            .expect("restart() needs Cluster::start_private()");
        assert!(
            processes_in(&p.data).is_empty(),
            "restart() after kill(): the cluster is still running"
        );
        // The killed postmaster's lock files name its pid, which stays taken while nobody
        // reaps the process (a container whose init does not): the server would refuse to
        // start. Nothing of the cluster runs (checked above), so they are stale.
        let _ = std::fs::remove_file(p.data.join("postmaster.pid"));
        for stale in [
            format!(".s.PGSQL.{}.lock", self.port),
            format!(".s.PGSQL.{}", self.port),
        ] {
            let _ = std::fs::remove_file(self.dir.join(stale));
        }
        for attempt in 0..5 {
            if pg_ctl_start(p.root, &self.bindir, &self.dir, &p.data, self.port, "") {
                return;
            }
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            eprintln!(
                "pg_ctl start failed on port {} (attempt {attempt}): {tail:?}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        panic!("PostgreSQL did not restart: {log}");
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA (PEM) that signed the TLS cluster's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA (PEM) that did not sign the TLS cluster's certificate.
    pub fn wrong_ca_file(&self) -> PathBuf {
        self.dir.join("wrong-ca.pem")
    }

    /// The URL of database `db` as the `postgres` superuser (trust authentication).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn fresh_database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs one SQL statement with `psql` against database `db`; panics when it fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .env("PGSSLMODE", "prefer")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .expect("PostgreSQL is not installed: run scripts/test (it installs Debian's postgresql)")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when we are root.
fn as_owner(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Starts a cluster; `tls` writes certificates into the cluster's directory and gives the
/// server options that use them (TCP connections then over TLS only).
fn start(tls: Option<fn(&Path, bool) -> String>) -> Cluster {
    let bindir = bindir();
    let root = is_root();
    // The directory belongs to whoever runs the server.
    let mk = if root {
        Command::new("runuser")
            .args(["-u", "postgres", "--", "mktemp", "-d"])
            .arg(std::env::temp_dir().join("portcullis-pg-XXXXXX"))
            .output()
    } else {
        Command::new("mktemp")
            .arg("-d")
            .arg(std::env::temp_dir().join("portcullis-pg-XXXXXX"))
            .output()
    }
    .expect("mktemp");
    assert!(mk.status.success(), "mktemp: {mk:?}");
    let dir = PathBuf::from(String::from_utf8_lossy(&mk.stdout).trim());
    let data = dir.join("data");
    let init = as_owner(root, &bindir.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .stdout(Stdio::null())
        .output()
        .expect("run initdb");
    assert!(
        init.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let tls_options = match tls {
        None => String::new(),
        Some(make) => {
            let options = make(&dir, root);
            // TCP over TLS only; the local socket as before.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("write pg_hba.conf");
            format!(" {options}")
        }
    };
    // Stop the server and remove its directory once this process is gone (a bounded loop: it
    // ends with the process).
    let stop = format!(
        "{} '{}' -D '{}' stop -m immediate >/dev/null 2>&1",
        if root { "runuser -u postgres --" } else { "" },
        bindir.join("pg_ctl").display(),
        data.display()
    );
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display(),
    );
    for attempt in 0..5 {
        let port = free_port();
        if pg_ctl_start(root, &bindir, &dir, &data, port, &tls_options) {
            // `setsid -f` forks the watchdog into its own session and returns at once.
            let started = Command::new("setsid")
                .args(["-f", "sh", "-c", &watchdog])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("start the cluster's watchdog");
            assert!(started.success(), "the cluster's watchdog did not start");
            return Cluster {
                port,
                bindir,
                dir,
                private: Some(Private { root, data }),
            };
        }
        eprintln!("pg_ctl start failed on port {port} (attempt {attempt}), trying another");
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    panic!("PostgreSQL did not start: {log}");
}

/// `pg_ctl start` on `port`, waiting until the server accepts connections; whether it started.
fn pg_ctl_start(
    root: bool,
    bindir: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    tls_options: &str,
) -> bool {
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
         -c max_connections=200{tls_options}",
        dir.display()
    );
    as_owner(root, &bindir.join("pg_ctl"))
        .arg("-D")
        .arg(data)
        .args(["-o", &opts, "-w", "-t", "60", "-l"])
        .arg(dir.join("server.log"))
        .arg("start")
        .stdout(Stdio::null())
        .status()
        .expect("run pg_ctl")
        .success()
}

/// The processes whose working directory is `data` (every PostgreSQL server process of that
/// cluster works there).
fn processes_in(data: &Path) -> Vec<u32> {
    let Ok(target) = data.canonicalize() else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            (cwd == target).then_some(pid)
        })
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let Some(p) = &self.private else {
            return;
        };
        // A paused cluster handles no signal but SIGCONT.
        for pid in processes_in(&p.data) {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        let _ = as_owner(p.root, &self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&p.data)
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for _ in 0..100 {
            if processes_in(&p.data).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
