//! The language-neutral spec in `protocol/` against the real server: conformance transcripts,
//! the command list, and the error-code table.

use crate::harness::Server;
use portcullis_protocol::ErrorCode;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn protocol_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol")
}

/// Whether `actual` matches `expected` under the transcript rules of
/// `protocol/conformance/README.md`. On mismatch, returns the JSON path where it fails.
fn matches(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    let fail = || Err(format!("at {path}: expected {expected}, got {actual}"));
    match expected {
        Value::String(p) if p == "{{any}}" => Ok(()),
        Value::String(p) if p == "{{string}}" => {
            if actual.is_string() {
                Ok(())
            } else {
                fail()
            }
        }
        Value::String(p) if p == "{{int}}" => {
            if actual.as_u64().is_some() {
                Ok(())
            } else {
                fail()
            }
        }
        Value::String(p) if p == "{{hash}}" => match actual.as_str() {
            Some(s)
                if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Ok(())
            }
            _ => fail(),
        },
        Value::String(p) if p == "{{time}}" => match actual.as_str() {
            Some(s) if is_event_time(s) => Ok(()),
            _ => fail(),
        },
        Value::Object(e) => {
            let Some(a) = actual.as_object() else {
                return fail();
            };
            let ek: BTreeSet<&String> = e.keys().collect();
            let ak: BTreeSet<&String> = a.keys().collect();
            if ek != ak {
                return Err(format!("at {path}: keys {ek:?} != {ak:?} in {actual}"));
            }
            for (k, ev) in e {
                matches(ev, &a[k], &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        Value::Array(e) => {
            let Some(a) = actual.as_array() else {
                return fail();
            };
            if e.len() != a.len() {
                return fail();
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                matches(ev, av, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Value::Number(n) => match (n.as_f64(), actual.as_f64()) {
            (Some(x), Some(y)) if x == y => Ok(()),
            _ => fail(),
        },
        _ if expected == actual => Ok(()),
        _ => fail(),
    }
}

fn is_event_time(s: &str) -> bool {
    let shape = s.len() == 24
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            23 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    shape && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

fn substitute(v: &mut Value, token: &str) {
    match v {
        Value::String(s) if s == "{{operator_token}}" => *s = token.to_owned(),
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, token)),
        Value::Object(m) => m.values_mut().for_each(|x| substitute(x, token)),
        _ => {}
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

async fn replay(file: &Path) {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let server = Server::start();
    let token = server.operator_token();
    let sock = TcpStream::connect(server.tcp).await.unwrap();
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    let text = std::fs::read_to_string(file).unwrap();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = format!("{name}:{}", n + 1);
        let step: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{at}: {e}"));
        let step = step
            .as_object()
            .unwrap_or_else(|| panic!("{at}: not an object"));
        assert_eq!(step.len(), 1, "{at}: a step has exactly one member");
        let (kind, arg) = step.iter().next().unwrap();
        match kind.as_str() {
            "comment" => {}
            "send" => {
                let mut req = arg.clone();
                substitute(&mut req, token.expose());
                let mut bytes = serde_json::to_vec(&req).unwrap();
                bytes.push(b'\n');
                wr.write_all(&bytes).await.unwrap();
            }
            "send_raw" => wr
                .write_all(arg.as_str().unwrap().as_bytes())
                .await
                .unwrap(),
            "send_hex" => wr.write_all(&unhex(arg.as_str().unwrap())).await.unwrap(),
            "expect" => {
                let mut got = String::new();
                let n = tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut got))
                    .await
                    .unwrap_or_else(|_| panic!("{at}: no response within 10 s"))
                    .unwrap();
                assert!(n > 0, "{at}: connection closed, expected {arg}");
                let actual: Value = serde_json::from_str(&got)
                    .unwrap_or_else(|e| panic!("{at}: response is not JSON ({e}): {got}"));
                if let Err(why) = matches(arg, &actual, "$") {
                    panic!("{at}: {why}");
                }
            }
            "expect_closed" => {
                let mut rest = Vec::new();
                tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut rest))
                    .await
                    .unwrap_or_else(|_| panic!("{at}: connection still open after 10 s"))
                    .unwrap();
                assert!(
                    rest.is_empty(),
                    "{at}: unexpected bytes before close: {:?}",
                    String::from_utf8_lossy(&rest)
                );
            }
            other => panic!("{at}: unknown step {other}"),
        }
    }
}

#[test]
fn the_matcher_can_fail() {
    let e: Value = serde_json::json!({"a": "{{int}}", "b": "{{hash}}", "t": "{{time}}"});
    let good = serde_json::json!({"a": 3, "b": "0".repeat(64), "t": "2026-11-26T01:02:03.456Z"});
    assert!(matches(&e, &good, "$").is_ok());
    for bad in [
        serde_json::json!({"a": -1, "b": "0".repeat(64), "t": "2026-11-26T01:02:03.456Z"}),
        serde_json::json!({"a": 3, "b": "A".repeat(64), "t": "2026-11-26T01:02:03.456Z"}),
        serde_json::json!({"a": 3, "b": "0".repeat(64), "t": "2026-13-26T01:02:03.456Z"}),
        serde_json::json!({"a": 3, "b": "0".repeat(64), "t": "2026-11-26T01:02:03.456Z", "x": 1}),
    ] {
        assert!(matches(&e, &bad, "$").is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_transcripts_replay_against_the_server() {
    let dir = protocol_dir().join("conformance");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "transcripts missing in {}", dir.display());
    for f in &files {
        replay(f).await;
    }
}

/// `SYS.COMMANDS` and `protocol/commands/*.md` list the same commands, and each file states
/// the caller the registry enforces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_commands_and_protocol_docs_list_the_same_commands() {
    let server = Server::start();
    let mut c = server.client().await;
    let listed: portcullis_protocol::commands::sys::Commands = c
        .call_ok("SYS.COMMANDS", serde_json::json!({}))
        .await
        .unwrap();
    let served: BTreeSet<String> = listed.commands.iter().map(|c| c.name.clone()).collect();
    let dir = protocol_dir().join("commands");
    let documented: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".md").map(str::to_owned))
        .collect();
    assert_eq!(served, documented, "SYS.COMMANDS vs {}", dir.display());
    for cmd in &listed.commands {
        let doc = std::fs::read_to_string(dir.join(format!("{}.md", cmd.name))).unwrap();
        assert!(
            doc.lines()
                .next()
                .is_some_and(|l| l.trim() == format!("# {}", cmd.name)),
            "{}.md must start with its heading",
            cmd.name
        );
        assert!(
            doc.contains(&format!("`{}`", cmd.caller)),
            "{}.md must name its caller `{}`",
            cmd.name,
            cmd.caller
        );
    }
}

/// `protocol/errors.md` has one table row per code of the closed set, in order, and no other.
#[test]
fn errors_doc_lists_exactly_the_closed_set() {
    let doc = std::fs::read_to_string(protocol_dir().join("errors.md")).unwrap();
    let rows: Vec<String> = doc
        .lines()
        .filter_map(|l| l.trim().strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(code, _)| code.to_owned()))
        .filter(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'))
        .collect();
    let codes: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(rows, codes);
}
