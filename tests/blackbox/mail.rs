//! Reading the mail the server sends: the `.eml` files of a data directory's outbox or of the
//! SMTP sink's directory, parsed with `mailparse`. One reader for every test that needs a link or
//! a code.

use mailparse::{MailAddr, MailHeaderMap, ParsedMail};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a message may take to reach the outbox or the sink.
pub const MAIL_DEADLINE: Duration = Duration::from_secs(20);

/// The `.eml` files in `dir`, sorted by name (for the outbox: by time of writing); none when the
/// directory does not exist yet. Names starting with `.` are messages still being written
/// (protocol/outbox.md) and are skipped.
pub fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    paths
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Mail {
    pub path: PathBuf,
    pub from: Vec<String>,
    pub from_raw: String,
    pub to: Vec<String>,
    pub subject: String,
    pub mimetype: String,
    pub part_types: Vec<String>,
    pub text: String,
    pub html: String,
}

fn addresses(headers: &[mailparse::MailHeader], name: &str) -> Vec<String> {
    let Some(h) = headers.get_first_header(name) else {
        return Vec::new();
    };
    let Ok(list) = mailparse::addrparse_header(h) else {
        return Vec::new();
    };
    list.iter()
        .flat_map(|a| match a {
            MailAddr::Single(s) => vec![s.addr.clone()],
            MailAddr::Group(g) => g.addrs.iter().map(|s| s.addr.clone()).collect(),
        })
        .collect()
}

fn body_of(parsed: &ParsedMail, mimetype: &str) -> Option<String> {
    parsed
        .subparts
        .iter()
        .find(|p| p.ctype.mimetype == mimetype)
        .and_then(|p| p.get_body().ok())
}

impl Mail {
    /// Parses a message; `None` while it is incomplete (the outbox renames whole files into
    /// place, but the SMTP sink and older servers may not: the HTML part comes last and must be
    /// whole).
    pub fn parse(path: &Path, raw: &[u8]) -> Option<Mail> {
        let parsed = mailparse::parse_mail(raw).ok()?;
        let text = body_of(&parsed, "text/plain")?;
        let html = body_of(&parsed, "text/html")?;
        if !html.contains("</html>") {
            return None;
        }
        Some(Mail {
            path: path.to_owned(),
            from: addresses(&parsed.headers, "From"),
            from_raw: parsed.headers.get_first_value("From").unwrap_or_default(),
            to: addresses(&parsed.headers, "To"),
            subject: parsed
                .headers
                .get_first_value("Subject")
                .unwrap_or_default(),
            mimetype: parsed.ctype.mimetype.clone(),
            part_types: parsed
                .subparts
                .iter()
                .map(|p| p.ctype.mimetype.clone())
                .collect(),
            text,
            html,
        })
    }

    pub fn is_to(&self, addr: &str) -> bool {
        self.to.iter().any(|t| t.eq_ignore_ascii_case(addr))
    }

    fn text_lines(&self, keep: impl Fn(&str) -> bool) -> Vec<&str> {
        self.text
            .lines()
            .map(str::trim)
            .filter(|l| keep(l))
            .collect()
    }

    /// The one sign-in link of the text part.
    pub fn link(&self) -> String {
        let links = self.text_lines(|l| l.starts_with("http://") || l.starts_with("https://"));
        assert_eq!(links.len(), 1, "one link in the text part: {}", self.text);
        links[0].to_owned()
    }

    /// The token of the one sign-in link.
    pub fn link_token(&self) -> String {
        token_of(&self.link())
    }

    /// The one six-digit code of the text part.
    pub fn code(&self) -> String {
        let codes = self.text_lines(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(codes.len(), 1, "one code in the text part: {}", self.text);
        codes[0].to_owned()
    }
}

/// The token of a sign-in link.
pub fn token_of(link: &str) -> String {
    let (_, token) = link
        .split_once("/auth/magic?token=")
        .unwrap_or_else(|| panic!("not a sign-in link: {link}"));
    token.to_owned()
}

/// A directory that receives `.eml` files (an outbox or the sink), read in arrival order by
/// remembering which files were already handed out.
pub struct Inbox {
    dir: PathBuf,
    seen: HashSet<PathBuf>,
}

impl Inbox {
    /// Every message that arrives in `dir`, including those already there.
    pub fn at(dir: PathBuf) -> Inbox {
        Inbox {
            dir,
            seen: HashSet::new(),
        }
    }

    /// The outbox of a data directory, including the mail already there.
    pub fn outbox(data_dir: &Path) -> Inbox {
        Inbox::at(data_dir.join("outbox"))
    }

    /// The outbox of a data directory, ignoring every file already there (older mail, or mail
    /// cut short by a crash).
    pub fn outbox_from_now(data_dir: &Path) -> Inbox {
        let mut inbox = Inbox::outbox(data_dir);
        inbox.seen = eml_files(&inbox.dir).into_iter().collect();
        inbox
    }

    /// Every complete message now in the directory, by file name.
    pub fn all(&self) -> Vec<Mail> {
        eml_files(&self.dir)
            .into_iter()
            .filter_map(|p| Mail::parse(&p, &std::fs::read(&p).ok()?))
            .collect()
    }

    /// How many files the directory holds (complete or not).
    pub fn file_count(&self) -> usize {
        eml_files(&self.dir).len()
    }

    /// The next complete message to `addr` not handed out before, if one is there now.
    fn take_to(&mut self, addr: &str) -> Option<Mail> {
        let m = eml_files(&self.dir)
            .into_iter()
            .filter(|p| !self.seen.contains(p))
            .filter_map(|p| Mail::parse(&p, &std::fs::read(&p).ok()?))
            .find(|m| m.is_to(addr))?;
        self.seen.insert(m.path.clone());
        Some(m)
    }

    /// Waits (bounded by [`MAIL_DEADLINE`]) for a message to `addr` not handed out before.
    pub async fn next_to(&mut self, addr: &str) -> Mail {
        let never = AtomicBool::new(false);
        self.next_to_unless(addr, &never).await.unwrap_or_else(|| {
            panic!(
                "no mail to {addr} within {MAIL_DEADLINE:?} in {}",
                self.dir.display()
            )
        })
    }

    /// Like [`Inbox::next_to`], but `None` when `stop` is set first or nothing comes within
    /// [`MAIL_DEADLINE`] (for load that runs while the server may be killed).
    pub async fn next_to_unless(&mut self, addr: &str, stop: &AtomicBool) -> Option<Mail> {
        let deadline = Instant::now() + MAIL_DEADLINE;
        while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
            if let Some(m) = self.take_to(addr) {
                return Some(m);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Watches the directory for a second (bounded) and returns every complete message to
    /// `addr` found, handed out or not.
    pub async fn settled_to(&self, addr: &str) -> Vec<Mail> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.all().into_iter().filter(|m| m.is_to(addr)).collect()
    }
}
