//! `--history-file`: the room kept across a clean restart (the format and
//! its checks are `engine::snapshot`; this is the file's I/O).
//!
//! Taken once: the file is removed as it is loaded, before any client is
//! served, so a crash later can never bring back an older room under the
//! same epoch (a crash loses the ring and starts a new epoch, as without
//! the flag). Written at a clean stop, after the last close frames went
//! out: a temporary file beside it, fsync, rename, fsync of the folder.
//! Every failure is one line on stderr; the server then starts fresh.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::engine::snapshot::{self, Snapshot};

/// The room `path` holds, if it is there and passes every check; the file
/// is gone afterwards either way (a refused one too: it would be refused again).
pub fn take(path: &Path, config: &Config) -> Option<Snapshot> {
    let shown = path.display();
    let bytes = match read_bounded(path, config.history_bytes + snapshot::SLACK) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!(
                "websocket-public-chat: history: no {shown} (a first start, or the last stop \
                 was not clean): a new epoch"
            );
            return None;
        }
        Err(e) => {
            eprintln!("websocket-public-chat: history: cannot read {shown}: {e}; a new epoch");
            return None;
        }
    };
    if let Err(e) = fs::remove_file(path) {
        // Kept, it could come back after a crash under this epoch: not used.
        eprintln!(
            "websocket-public-chat: history: cannot remove {shown} after reading it: {e}; \
             a new epoch"
        );
        return None;
    }
    let decoded = match bytes {
        Some(bytes) => snapshot::decode(
            &bytes,
            config.history,
            config.history_bytes,
            config.max_message_size,
        ),
        None => Err(snapshot::Refusal::TooLarge),
    };
    match decoded {
        Ok(room) => {
            eprintln!(
                "websocket-public-chat: history: {} chats up to id {} of epoch {} from {shown}",
                room.chats.len(),
                room.last,
                room.epoch
            );
            Some(room)
        }
        Err(why) => {
            eprintln!("websocket-public-chat: history: {shown} refused: {why}; a new epoch");
            None
        }
    }
}

/// The file's bytes, or `None` if it holds more than `most`.
fn read_bounded(path: &Path, most: usize) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(most as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() <= most).then_some(bytes))
}

/// Writes `bytes` to `path` whole or not at all: a crash mid-write leaves
/// the old file or none, never half of one.
pub fn keep(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "names a folder, not a file"))?;
    let mut temporary = name.to_os_string();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary: PathBuf = path.with_file_name(temporary);
    let written = File::create(&temporary).and_then(|mut file| {
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
