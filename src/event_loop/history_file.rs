//! `--history-file`: the room kept across a clean restart (the format and
//! its checks are `engine::snapshot`; this is the file's I/O).
//!
//! Taken once: the file is removed as it is loaded, before any client is
//! served, so a crash later can never bring back an older room under the
//! same epoch (a crash loses the ring and starts a new epoch, as without
//! the flag). Written at a clean stop, after the last close frames went
//! out: a new temporary file beside it (never one that exists, never
//! through a link), fsync, rename, fsync of the folder. A path that holds
//! something else (not a regular file, or a file that is not one of ours)
//! is left alone, and not written at the stop either. Every failure is one
//! line on stderr; the server then starts a new epoch.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::engine::snapshot::{self, Snapshot};

/// What the start found at the path.
pub enum Taken {
    /// A room to carry on with (the file is gone now).
    Room(Snapshot),
    /// Nothing usable: a new epoch; the room is written there at the stop.
    Fresh,
    /// Something that is not ours: left as it is, and not written at the stop.
    LeftAlone,
}

/// Whether the folder of `path` takes a new file: checked at start, so a
/// path that could never be written stops the server there, not silently
/// at the next deploy.
pub fn check_folder(path: &Path) -> io::Result<()> {
    let probe = temporary(path)?;
    create_new(&probe)?;
    fs::remove_file(&probe)
}

/// The room `path` holds, if it is one of ours and passes every check.
pub fn take(path: &Path, config: &Config) -> Taken {
    let shown = path.display();
    let say = |what: &str| eprintln!("websocket-public-chat: history: {what}");
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            say(&format!(
                "no {shown} (a first start, or the last stop was not clean): a new epoch"
            ));
            return Taken::Fresh;
        }
        // A FIFO would block the start; a folder or a device is not ours.
        Ok(meta) if !meta.is_file() => {
            say(&format!(
                "{shown} is not a regular file: left alone, and the room will not be kept there"
            ));
            return Taken::LeftAlone;
        }
        _ => {}
    }
    let most = config.history_bytes + snapshot::SLACK;
    let bytes = match read_bounded(path, most) {
        Ok(bytes) => bytes,
        Err(e) => {
            say(&format!("cannot read {shown}: {e}; a new epoch"));
            return Taken::Fresh;
        }
    };
    if !bytes.starts_with(snapshot::MAGIC) {
        say(&format!(
            "{shown} is not a history file: left alone, and the room will not be kept there"
        ));
        return Taken::LeftAlone;
    }
    if let Err(e) = fs::remove_file(path) {
        // Kept, it could come back after a crash under this epoch: not used.
        say(&format!(
            "cannot remove {shown} after reading it: {e}; a new epoch"
        ));
        return Taken::Fresh;
    }
    let decoded = match bytes.len() > most {
        true => Err(snapshot::Refusal::TooLarge),
        false => snapshot::decode(
            &bytes,
            config.history,
            config.history_bytes,
            config.max_message_size,
        ),
    };
    match decoded {
        Ok(room) => {
            say(&format!(
                "{} chats up to id {} of epoch {} from {shown}",
                room.chats.len(),
                room.last,
                room.epoch
            ));
            Taken::Room(room)
        }
        Err(why) => {
            say(&format!("{shown} refused: {why}; a new epoch"));
            Taken::Fresh
        }
    }
}

/// The file's first `most` + 1 bytes at most (more than `most`: too large).
fn read_bounded(path: &Path, most: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(most as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A name beside `path` that nobody could have guessed in advance.
fn temporary(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "names a folder, not a file"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut temporary = name.to_os_string();
    temporary.push(format!(".{}.{nanos:09}.tmp", std::process::id()));
    Ok(path.with_file_name(temporary))
}

/// Creates `path`, failing if anything (a file, a link) is there already.
fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// Writes `bytes` to `path` whole or not at all: a crash mid-write leaves
/// no file there (or the one before), never half of one.
pub fn keep(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = temporary(path)?;
    let written = create_new(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let renamed = written.and_then(|()| fs::rename(&temporary, path));
    if renamed.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    renamed?;
    // The rename itself is durable once the folder is.
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(folder)?.sync_all()
}
