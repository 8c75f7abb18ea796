//! Credentials read from files that something else rotates: a directory holding
//! `AccessKeyId`, `AccessKeySecret` and optionally `SecurityToken` and `Expiration` (ACK swaps
//! such a directory behind a symlink; kubelet swaps a mounted Secret's `..data` symlink), or
//! explicit paths of the three files (Fluid's secret options). The files are looked at again
//! cheaply (each file's resolved path, inode, size and mtime) at most every few seconds,
//! every tenth of a second once a known `Expiration` is near, and at once when the service
//! refuses the keys; they are read again only when that look sees a change. One request
//! looks while the others use the keys in use, so none waits on the files' I/O (but one
//! whose keys were refused), and a rotation caught half-way (the
//! files changed while being read, or a file missing or empty) keeps the current keys until
//! the next look. Must not know where the files come from (flags, Fluid, CSI) nor log a
//! secret.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::ProvideCredentials;
use crate::oss::{time, Credentials, OssError, Secret};
use crate::store::BoxFut;

/// Where the keys are: which file holds which part.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CredentialFiles {
    pub access_key_id: PathBuf,
    pub access_key_secret: PathBuf,
    /// STS keys come with a token; long-term keys do not.
    pub security_token: Option<PathBuf>,
    /// When the keys stop working (ISO 8601, e.g. `2026-12-04T12:00:00Z`).
    pub expiration: Option<PathBuf>,
    /// The token and expiration files may be absent (the directory form: a directory of
    /// long-term keys has no `SecurityToken`).
    pub optional_extras: bool,
    /// For the log: what was given (a directory or a file of the key id).
    pub source: String,
}

impl CredentialFiles {
    /// The directory form: `DIR/AccessKeyId`, `DIR/AccessKeySecret`, and `DIR/SecurityToken`
    /// and `DIR/Expiration` when present.
    pub fn in_dir(dir: &Path) -> CredentialFiles {
        CredentialFiles {
            access_key_id: dir.join("AccessKeyId"),
            access_key_secret: dir.join("AccessKeySecret"),
            security_token: Some(dir.join("SecurityToken")),
            expiration: Some(dir.join("Expiration")),
            optional_extras: true,
            source: format!("the credential files in {}", dir.display()),
        }
    }

    /// Explicit files of the key id, the secret and (for STS keys) the token.
    pub fn explicit(id: PathBuf, secret: PathBuf, token: Option<PathBuf>) -> CredentialFiles {
        let source = format!("the credential files {}", id.display());
        CredentialFiles {
            access_key_id: id,
            access_key_secret: secret,
            security_token: token,
            expiration: None,
            optional_extras: false,
            source,
        }
    }

    fn all(&self) -> Vec<(&Path, bool)> {
        let mut files = vec![
            (self.access_key_id.as_path(), true),
            (self.access_key_secret.as_path(), true),
        ];
        for extra in [&self.security_token, &self.expiration]
            .into_iter()
            .flatten()
        {
            files.push((extra.as_path(), !self.optional_extras));
        }
        files
    }

    /// What the files look like now, without reading them: a change of any resolved path,
    /// inode, size or mtime is a change (a swapped symlink, a file replaced or rewritten).
    pub fn stamp(&self) -> Stamp {
        Stamp(
            self.all()
                .into_iter()
                .map(|(path, _)| FileStamp::of(path))
                .collect(),
        )
    }

    /// Reads the keys. A read the files changed under (a rotation half done) is read again,
    /// a few times; the stamp returned is the one the keys were read under.
    pub fn read(&self) -> Result<(Held, Stamp), OssError> {
        let failed = |why: String| {
            OssError::Config(format!(
                "cannot read credentials from {}: {why}",
                self.source
            ))
        };
        for _ in 0..5 {
            let before = self.stamp();
            let read = self.read_once();
            if self.stamp() == before {
                // The files held still: what was read (or what is wrong) is what they say.
                return read.map(|held| (held, before)).map_err(failed);
            }
            // Changed while being read: a rotation under way, over in a moment.
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(failed(
            "the files kept changing while they were read".into(),
        ))
    }

    fn read_once(&self) -> Result<Held, String> {
        let read = |path: &Path, required: bool| -> Result<Option<String>, String> {
            match std::fs::read_to_string(path) {
                // Secrets mounted by kubelet or written by `echo` end with a newline.
                Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
                Ok(_) if required => Err(format!("{} is empty", path.display())),
                Ok(_) => Ok(None),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                // The error names the file, never its content.
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            }
        };
        let id = read(&self.access_key_id, true)?.unwrap_or_default();
        let secret = read(&self.access_key_secret, true)?.unwrap_or_default();
        let token = match &self.security_token {
            Some(p) => read(p, !self.optional_extras)?,
            None => None,
        };
        let expiration = match &self.expiration {
            Some(p) => match read(p, !self.optional_extras)? {
                Some(t) => Some(time::parse_iso8601_extended(&t).ok_or_else(|| {
                    format!(
                        "{} holds {t:?}, not a time such as 2026-12-04T12:00:00Z",
                        p.display()
                    )
                })?),
                None => None,
            },
            None => None,
        };
        Ok(Held {
            credentials: Credentials {
                access_key_id: id,
                access_key_secret: Secret::new(secret),
                security_token: token.map(Secret::new),
            },
            expiration,
        })
    }
}

/// One file as seen by `stat` through its symlinks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    resolved: Option<PathBuf>,
    /// (device, inode, size, mtime in ns); `None` when the file is absent.
    meta: Option<(u64, u64, u64, i128)>,
}

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let resolved = std::fs::canonicalize(path).ok();
        let meta = resolved
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| {
                let mtime = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
                (m.dev(), m.ino(), m.size(), mtime)
            });
        FileStamp { resolved, meta }
    }
}

/// What every file looked like (in the order of `CredentialFiles::all`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp(Vec<FileStamp>);

/// Keys as read, with the time they stop working when the files say.
#[derive(Clone, Debug)]
pub struct Held {
    pub credentials: Credentials,
    pub expiration: Option<SystemTime>,
}

/// How often the files are looked at while the keys are far from expiry.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long before a known expiry the files are looked at more often.
const EXPIRY_MARGIN: Duration = Duration::from_secs(180);
/// How often they are looked at then (not at every request: a busy mount makes thousands).
const NEAR_EXPIRY_INTERVAL: Duration = Duration::from_millis(100);

/// The provider over rotating files.
pub struct RotatingFiles {
    files: CredentialFiles,
    check_interval: Duration,
    /// The keys in use and what is known of the files, locked only to read or replace
    /// them, never across I/O.
    state: Mutex<State>,
    /// Held by the one request looking at the files; the others meanwhile use the keys in
    /// use (they are valid until a rotation is seen).
    looking: Mutex<()>,
    /// The key id the files held when opened: who signs, as far as the cache can tell.
    first_key_id: String,
}

struct State {
    held: Held,
    stamp: Stamp,
    checked: Instant,
    /// Reloads so far (for the log and the tests).
    reloads: u64,
    /// The stamp of files last found unusable: not read again (nor warned about) until
    /// they change again.
    warned: Option<Stamp>,
    /// Expired keys with no new files have been warned about.
    warned_expired: bool,
}

impl RotatingFiles {
    /// Reads the files once: unreadable files are an error now, not at the first read.
    pub fn open(files: CredentialFiles) -> Result<RotatingFiles, OssError> {
        Self::with_check_interval(files, CHECK_INTERVAL)
    }

    /// `open` with another interval between looks (tests).
    pub fn with_check_interval(
        files: CredentialFiles,
        check_interval: Duration,
    ) -> Result<RotatingFiles, OssError> {
        let (held, stamp) = files.read()?;
        let first_key_id = held.credentials.access_key_id.clone();
        Ok(RotatingFiles {
            files,
            check_interval,
            first_key_id,
            looking: Mutex::new(()),
            state: Mutex::new(State {
                held,
                stamp,
                checked: Instant::now(),
                reloads: 0,
                warned: None,
                warned_expired: false,
            }),
        })
    }

    /// How many times new keys were read from the files.
    pub fn reloads(&self) -> u64 {
        self.state.lock().unwrap().reloads
    }

    /// The keys to use now. The files are looked at again when the interval has passed, a
    /// tenth of a second apart once expiry is near, and whatever the time with `force` (the
    /// service refused the keys). One request looks; the others use the keys in use
    /// meanwhile, so no request waits on the files' I/O, except a forced one, which waits
    /// for the look under way (its keys were refused: the look may have newer ones).
    fn current(&self, force: bool) -> Credentials {
        let now = Instant::now();
        let due = {
            let state = self.state.lock().unwrap();
            let near_expiry = state.held.expiration.is_some_and(|exp| {
                exp.duration_since(SystemTime::now()).unwrap_or_default() <= EXPIRY_MARGIN
            });
            let interval = if near_expiry {
                NEAR_EXPIRY_INTERVAL.min(self.check_interval)
            } else {
                self.check_interval
            };
            force || now.duration_since(state.checked) >= interval
        };
        if due {
            match self.looking.try_lock() {
                Ok(_looking) => self.look(now),
                Err(_) if force => drop(self.looking.lock()),
                Err(_) => {} // another request is looking: the keys in use serve this one
            }
        }
        let mut state = self.state.lock().unwrap();
        if state
            .held
            .expiration
            .is_some_and(|exp| exp <= SystemTime::now())
            && !state.warned_expired
        {
            state.warned_expired = true;
            tracing::warn!(
                source = %self.files.source,
                access_key_id = %super::masked_key_id(&state.held.credentials.access_key_id),
                "the credentials in the files have expired and no new ones were written; requests will be refused until they are"
            );
        }
        state.held.credentials.clone()
    }

    /// Reads the files again if they changed since they were last read (the caller holds
    /// `looking`; the state is locked only to compare and to replace, not while reading).
    fn look(&self, now: Instant) {
        let stamp = self.files.stamp();
        {
            let mut state = self.state.lock().unwrap();
            state.checked = now;
            // Unchanged since they were read, or since they were found unusable.
            if stamp == state.stamp || state.warned.as_ref() == Some(&stamp) {
                return;
            }
        }
        let read = self.files.read();
        let mut state = self.state.lock().unwrap();
        match read {
            Ok((held, _))
                if self.files.optional_extras
                    && state.held.credentials.security_token.is_some()
                    && held.credentials.security_token.is_none() =>
            {
                // A directory that held STS keys lost its token: a rotation writing file by
                // file, not long-term keys. The current keys stay until the token is back
                // (the stamp is not taken, so the next look reads again).
                tracing::info!(
                    source = %self.files.source,
                    "the credential files have no SecurityToken for the moment (a rotation in progress): the current keys stay in use"
                );
            }
            Ok((held, stamp)) => {
                state.reloads += 1;
                tracing::info!(
                    source = %self.files.source,
                    access_key_id = %super::masked_key_id(&held.credentials.access_key_id),
                    expires = ?held.expiration.map(time::iso8601_extended),
                    "credential files changed: new keys in use"
                );
                state.held = held;
                state.stamp = stamp;
                state.warned = None;
                state.warned_expired = false;
            }
            Err(e) => {
                // Half-written or removed: the current keys serve until the files change
                // again (warned once per state of the files).
                tracing::warn!("the credential files changed but cannot be used yet; the current keys stay in use: {e}");
                state.warned = Some(stamp);
            }
        }
    }
}

impl ProvideCredentials for RotatingFiles {
    fn credentials(&self) -> BoxFut<'_, Result<Credentials, OssError>> {
        Box::pin(async move { Ok(self.current(false)) })
    }

    fn refused<'a>(&'a self, rejected: &'a Credentials) -> BoxFut<'a, bool> {
        Box::pin(async move {
            let current = self.current(false);
            if !same_keys(&current, rejected) {
                // Already rotated since the refused request was signed.
                return true;
            }
            !same_keys(&self.current(true), rejected)
        })
    }

    fn describe(&self) -> String {
        self.files.source.clone()
    }

    fn principal(&self) -> String {
        // The key id, not the files' path: two tenants whose Secrets are mounted at the
        // same path are two principals. (Hashed by the cache, as every principal is.) An
        // STS id changes at each rotation, so a later mount of the same files may count as
        // another principal: the cache then asks the server more often, never less.
        format!("key {} from {}", self.first_key_id, self.files.source)
    }
}

fn same_keys(a: &Credentials, b: &Credentials) -> bool {
    a.access_key_id == b.access_key_id
        && a.access_key_secret.expose() == b.access_key_secret.expose()
        && a.security_token.as_ref().map(Secret::expose)
            == b.security_token.as_ref().map(Secret::expose)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Writes a directory of STS keys named `n`.
    fn keys_dir(base: &Path, n: u32, expiration: Option<&str>) -> PathBuf {
        let dir = base.join(format!("keys-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("AccessKeyId"), format!("STS.id-{n}\n")).unwrap();
        std::fs::write(dir.join("AccessKeySecret"), format!("secret-{n}\n")).unwrap();
        std::fs::write(dir.join("SecurityToken"), format!("token-{n}")).unwrap();
        if let Some(e) = expiration {
            std::fs::write(dir.join("Expiration"), e).unwrap();
        }
        dir
    }

    /// Points `link` at `target` atomically (a new symlink renamed over the old one), as
    /// kubelet and ACK do.
    fn swap(link: &Path, target: &Path) {
        let name = link.file_name().unwrap().to_string_lossy();
        let tmp = link.with_file_name(format!("{name}.swapping"));
        let _ = std::fs::remove_file(&tmp);
        symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, link).unwrap();
    }

    fn id(p: &RotatingFiles, force: bool) -> String {
        p.current(force).access_key_id
    }

    #[test]
    fn a_swapped_directory_symlink_is_seen_at_the_next_look_not_before() {
        let t = tempfile::tempdir().unwrap();
        let link = t.path().join("creds");
        symlink(keys_dir(t.path(), 1, None), &link).unwrap();
        let p = RotatingFiles::with_check_interval(
            CredentialFiles::in_dir(&link),
            Duration::from_millis(300),
        )
        .unwrap();
        let c = p.current(false);
        assert_eq!(c.access_key_id, "STS.id-1");
        assert_eq!(c.access_key_secret.expose(), "secret-1", "trimmed");
        assert_eq!(c.security_token.as_ref().unwrap().expose(), "token-1");
        swap(&link, &keys_dir(t.path(), 2, None));
        // Within the interval nothing is looked at: no stat per request.
        assert_eq!(id(&p, false), "STS.id-1");
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(id(&p, false), "STS.id-2");
        assert_eq!(p.reloads(), 1);
        // Unchanged files are not read again.
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(id(&p, false), "STS.id-2");
        assert_eq!(p.reloads(), 1);
    }

    #[test]
    fn kubelet_style_data_symlink_swaps_are_seen_through_the_file_links() {
        // DIR/AccessKeyId -> ..data/AccessKeyId, ..data -> ..2026_1: the directory itself
        // never changes, only the link inside it.
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("secret");
        std::fs::create_dir(&dir).unwrap();
        let first = keys_dir(&dir, 1, None);
        symlink(&first, dir.join("..data")).unwrap();
        for f in ["AccessKeyId", "AccessKeySecret", "SecurityToken"] {
            symlink(Path::new("..data").join(f), dir.join(f)).unwrap();
        }
        let p = RotatingFiles::with_check_interval(
            CredentialFiles::explicit(
                dir.join("AccessKeyId"),
                dir.join("AccessKeySecret"),
                Some(dir.join("SecurityToken")),
            ),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(id(&p, false), "STS.id-1");
        swap(&dir.join("..data"), &keys_dir(&dir, 2, None));
        assert_eq!(
            id(&p, false),
            "STS.id-1",
            "not looked at within the interval"
        );
        assert_eq!(id(&p, true), "STS.id-2", "a forced look sees it");
    }

    #[test]
    fn the_principal_is_the_key_id_not_only_the_path() {
        // Two tenants, their Secrets mounted at the same path (in two pods): the same
        // source, two principals.
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (dir_a, dir_b) = (keys_dir(a.path(), 1, None), keys_dir(b.path(), 2, None));
        let first = RotatingFiles::open(CredentialFiles::in_dir(&dir_a)).unwrap();
        let mut second = RotatingFiles::open(CredentialFiles::in_dir(&dir_b)).unwrap();
        second.files.source = first.files.source.clone();
        assert_eq!(first.describe(), second.describe());
        assert_ne!(first.principal(), second.principal());
        assert!(
            first.principal().contains("STS.id-1"),
            "{}",
            first.principal()
        );
        // The same keys at the same path: one principal.
        let again = RotatingFiles::open(CredentialFiles::in_dir(&dir_a)).unwrap();
        assert_eq!(first.principal(), again.principal());
    }

    #[test]
    fn a_token_missing_for_a_moment_is_a_rotation_not_long_term_keys() {
        let t = tempfile::tempdir().unwrap();
        let dir = keys_dir(t.path(), 1, None);
        let p = RotatingFiles::with_check_interval(CredentialFiles::in_dir(&dir), Duration::ZERO)
            .unwrap();
        assert_eq!(id(&p, false), "STS.id-1");
        // A rotation writing file by file: the token removed, the new id written.
        std::fs::remove_file(dir.join("SecurityToken")).unwrap();
        std::fs::write(dir.join("AccessKeyId"), "STS.id-2").unwrap();
        std::fs::write(dir.join("AccessKeySecret"), "secret-2").unwrap();
        let held = p.current(true);
        assert_eq!(held.access_key_id, "STS.id-1");
        assert_eq!(
            held.security_token.as_ref().map(Secret::expose),
            Some("token-1")
        );
        // The token is back: the new set is taken.
        std::fs::write(dir.join("SecurityToken"), "token-2").unwrap();
        let held = p.current(true);
        assert_eq!(held.access_key_id, "STS.id-2");
        assert_eq!(
            held.security_token.as_ref().map(Secret::expose),
            Some("token-2")
        );
    }

    #[test]
    fn files_rewritten_in_place_are_a_change_too() {
        let t = tempfile::tempdir().unwrap();
        let dir = keys_dir(t.path(), 1, None);
        let p = RotatingFiles::with_check_interval(CredentialFiles::in_dir(&dir), Duration::ZERO)
            .unwrap();
        assert_eq!(id(&p, false), "STS.id-1");
        std::fs::write(dir.join("AccessKeyId"), "STS.id-rewritten-longer").unwrap();
        assert_eq!(id(&p, false), "STS.id-rewritten-longer");
    }

    #[test]
    fn a_half_done_rotation_keeps_the_current_keys() {
        let t = tempfile::tempdir().unwrap();
        let dir = keys_dir(t.path(), 1, None);
        let p = RotatingFiles::with_check_interval(CredentialFiles::in_dir(&dir), Duration::ZERO)
            .unwrap();
        std::fs::write(dir.join("AccessKeySecret"), "").unwrap();
        assert_eq!(id(&p, false), "STS.id-1", "an empty secret is not used");
        std::fs::remove_file(dir.join("AccessKeyId")).unwrap();
        assert_eq!(id(&p, false), "STS.id-1", "a missing id is not used");
        assert_eq!(p.reloads(), 0);
        std::fs::write(dir.join("AccessKeyId"), "STS.id-3").unwrap();
        std::fs::write(dir.join("AccessKeySecret"), "secret-3").unwrap();
        assert_eq!(id(&p, false), "STS.id-3");
    }

    #[test]
    fn near_a_known_expiration_looks_come_a_tenth_of_a_second_apart() {
        let t = tempfile::tempdir().unwrap();
        let link = t.path().join("creds");
        let soon = time::iso8601_extended(SystemTime::now() + Duration::from_secs(60));
        symlink(keys_dir(t.path(), 1, Some(&soon)), &link).unwrap();
        let p = RotatingFiles::with_check_interval(
            CredentialFiles::in_dir(&link),
            Duration::from_secs(3600),
        )
        .unwrap();
        let later = time::iso8601_extended(SystemTime::now() + Duration::from_secs(3600));
        swap(&link, &keys_dir(t.path(), 2, Some(&later)));
        std::thread::sleep(NEAR_EXPIRY_INTERVAL + Duration::from_millis(50));
        assert_eq!(
            id(&p, false),
            "STS.id-2",
            "expiry within the margin: looked at"
        );
        swap(&link, &keys_dir(t.path(), 3, Some(&later)));
        assert_eq!(
            id(&p, false),
            "STS.id-2",
            "an hour left: not looked at within the interval"
        );
    }

    /// A look that cannot finish (here a key file that is a FIFO nobody writes yet: its
    /// read blocks) holds up no other request: they get the keys in use at once.
    #[test]
    fn a_slow_look_at_the_files_stalls_no_other_request() {
        let t = tempfile::tempdir().unwrap();
        let dir = keys_dir(t.path(), 1, None);
        let p = std::sync::Arc::new(
            RotatingFiles::with_check_interval(
                CredentialFiles::in_dir(&dir),
                Duration::from_millis(10),
            )
            .unwrap(),
        );
        let fifo = dir.join("AccessKeyId");
        std::fs::remove_file(&fifo).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let looking = std::thread::spawn({
            let p = p.clone();
            move || id(&p, false)
        });
        // The look is blocked opening the FIFO; every other request answers now.
        std::thread::sleep(Duration::from_millis(100));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn({
            let p = p.clone();
            move || {
                for _ in 0..100 {
                    let _ = tx.send(id(&p, false));
                }
            }
        });
        for _ in 0..100 {
            let got = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("a request waited on the look at the files");
            assert_eq!(got, "STS.id-1");
        }
        // The rotation completes: the FIFO's reader is given the new id, and a regular file
        // with it takes the FIFO's place (the look reads again: the files changed under it).
        use std::io::Write;
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let regular = dir.join("AccessKeyId.new");
        std::fs::write(&regular, "STS.id-9\n").unwrap();
        std::fs::rename(&regular, &fifo).unwrap();
        writer.write_all(b"STS.id-9\n").unwrap();
        drop(writer);
        assert_eq!(looking.join().unwrap(), "STS.id-9");
        assert_eq!(id(&p, false), "STS.id-9");
    }

    #[test]
    fn errors_name_the_file_never_its_content() {
        let t = tempfile::tempdir().unwrap();
        let dir = keys_dir(t.path(), 1, Some("not a time"));
        let err = RotatingFiles::open(CredentialFiles::in_dir(&dir))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("Expiration") && err.contains("not a time"),
            "{err}"
        );
        assert!(
            !err.contains("secret-1") && !err.contains("token-1"),
            "{err}"
        );
        let missing = CredentialFiles::explicit(
            dir.join("nope"),
            dir.join("AccessKeySecret"),
            Some(dir.join("SecurityToken")),
        );
        let err = RotatingFiles::open(missing).err().unwrap().to_string();
        assert!(err.contains("nope") && !err.contains("secret-1"), "{err}");
        // The explicit form requires its token file; the directory form does not.
        std::fs::remove_file(dir.join("SecurityToken")).unwrap();
        std::fs::remove_file(dir.join("Expiration")).unwrap();
        let p = RotatingFiles::open(CredentialFiles::in_dir(&dir)).unwrap();
        assert!(p.current(false).security_token.is_none());
        let explicit = CredentialFiles::explicit(
            dir.join("AccessKeyId"),
            dir.join("AccessKeySecret"),
            Some(dir.join("SecurityToken")),
        );
        assert!(RotatingFiles::open(explicit).is_err());
    }

    #[tokio::test]
    async fn a_refusal_looks_at_once_and_says_whether_other_keys_are_there() {
        let t = tempfile::tempdir().unwrap();
        let link = t.path().join("creds");
        symlink(keys_dir(t.path(), 1, None), &link).unwrap();
        let p = RotatingFiles::with_check_interval(
            CredentialFiles::in_dir(&link),
            Duration::from_secs(3600),
        )
        .unwrap();
        let old = p.current(false);
        assert!(!p.refused(&old).await, "no other keys: no retry");
        swap(&link, &keys_dir(t.path(), 2, None));
        assert!(p.refused(&old).await, "rotated: worth a retry");
        assert_eq!(id(&p, false), "STS.id-2");
        assert!(
            p.refused(&old).await,
            "a request signed with the old keys retries"
        );
        assert_eq!(p.reloads(), 1);
    }
}
