//! Mail across nodes: each queued message is delivered by one node, once.

use crate::harness::{signup, Server};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SINK_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");

/// The black-box suite's SMTP sink, accepting each message only after `delay_s` seconds.
struct SlowSink {
    child: Child,
    port: u16,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SlowSink {
    fn start(delay_s: u32) -> SlowSink {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mail");
        let mut child = Command::new("/usr/bin/python3")
            .arg(SINK_SCRIPT)
            .arg("0")
            .arg(&dir)
            .arg(delay_s.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the SMTP sink (needs python3-aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the sink's port");
        SlowSink {
            child,
            port,
            dir,
            _tmp: tmp,
        }
    }

    fn received(&self) -> usize {
        eml_count(&self.dir)
    }
}

impl Drop for SlowSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn eml_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0)
}

/// A node starting while another node's message is still being delivered leaves it alone:
/// the message reaches the mail server once.
#[tokio::test]
async fn a_message_queued_on_one_node_is_delivered_once_while_other_nodes_start() {
    let sink = SlowSink::start(3);
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "smtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsmtp_tls = \"none\"\n",
            sink.port
        ),
    )
    .unwrap();
    let flags = ["--config", config.path().to_str().unwrap()];
    let nodes = Server::cluster(1, &flags);
    let mut a = nodes[0].client().await;
    signup(&mut a, "once@example.com", None).await;
    a.call_ok::<serde_json::Value>(
        "MAGIC.SEND",
        serde_json::json!({"email": "once@example.com"}),
    )
    .await
    .unwrap();
    // While the mail server holds A's message, two more nodes start on the same database.
    let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    let _b = nodes[0].join(&flags);
    let _c = nodes[0].join(&flags);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.received() == 0 {
        assert!(Instant::now() < deadline, "the message never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for a second copy, accepted after the same delay, to arrive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sink.received(), 1, "delivered more than once");
}
