//! The folder source: Kubernetes objects as YAML files in a directory, watched for changes.
//!
//! Every `.yaml`, `.yml` and `.json` file (hidden files skipped, subfolders included) may hold
//! several documents, and `List` kinds. Changes are seen through `notify` (inotify on Linux);
//! where a native watcher cannot be made (e.g. out of inotify instances) it falls back to
//! `notify`'s poll watcher every 250 ms. Every change rescans the folder (cheap at local-mode
//! sizes; unchanged files are not parsed again) and swaps the whole index, so a rename or a
//! delete needs no special case. A file that is not valid YAML keeps its last good objects; an
//! invalid object keeps its last good version; both are logged with the file and the reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::Watcher;
use serde::Deserialize;

use super::{decode, ObjectError};
use crate::destination::Destination;
use crate::index::Object;

/// How long to wait for more events after one, so a burst (write + rename) is one rescan.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// The poll interval of the fallback watcher.
const POLL: Duration = Duration::from_millis(250);

/// Why the folder source stopped.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The folder cannot be read.
    #[error("reading folder {path}: {source}")]
    Read {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Neither the native nor the poll watcher could watch it.
    #[error("watching folder {path}: {source}")]
    Watch {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: notify::Error,
    },
}

/// Why a document of a file was skipped.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The text is not YAML (the whole file keeps its last good state).
    #[error("invalid YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    /// One document is not a valid object.
    #[error(transparent)]
    Object(#[from] ObjectError),
}

/// Parses a multi-document YAML (or JSON) text into objects of the kinds the index holds.
/// Documents of other kinds are skipped silently; invalid ones are returned as errors.
pub fn parse_yaml(text: &str) -> (Vec<Object>, Vec<ParseError>) {
    let mut objects = Vec::new();
    let (documents, error) = documents(text);
    let mut errors: Vec<ParseError> = error.into_iter().map(ParseError::Yaml).collect();
    for (index, value) in documents {
        for result in decode(index, value) {
            match result {
                Ok(object) => objects.push(object),
                Err(ObjectError::Ignored { .. }) => {}
                Err(e) => errors.push(e.into()),
            }
        }
    }
    (objects, errors)
}

/// The documents of a multi-document YAML (or JSON) text as JSON values, with their position in
/// the text (empty documents skipped); parsing stops at the first syntax error, which is
/// returned with the documents before it. Used for every kind read from the folder (the
/// identity controller reads its Secrets through it too).
pub fn documents(
    text: &str,
) -> (
    Vec<(usize, serde_json::Value)>,
    Option<serde_yaml_ng::Error>,
) {
    let mut values = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match serde_json::Value::deserialize(document) {
            Ok(serde_json::Value::Null) => {}
            Ok(value) => values.push((index, value)),
            // The parser cannot resynchronise after a syntax error.
            Err(e) => return (values, Some(e)),
        }
    }
    (values, None)
}

/// The YAML/JSON files under `dir` (subfolders included, hidden entries skipped), sorted.
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    list(dir, &mut paths)?;
    paths.sort();
    Ok(paths)
}

/// Whether a watch event only reports that something was read (opened, accessed, closed
/// without writing).
fn is_read_only(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write))
}

/// Loads the folder, then follows its changes until the destination is dropped.
/// The destination is marked ready after the first load.
pub async fn run(dir: PathBuf, dest: Destination) -> Result<(), FolderError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let handler = move |event: notify::Result<notify::Event>| {
        match &event {
            Err(error) => tracing::warn!(%error, "folder watch error"),
            // Reading a file is no change: without this, the rescan's own reads would trigger
            // the next rescan, forever. A close after writing is one (an in-place write ends so).
            Ok(e) if is_read_only(&e.kind) => return,
            Ok(_) => {}
        }
        // A full channel already holds a pending rescan: nothing is lost.
        let _ = tx.try_send(());
    };
    let _watcher = watch(&dir, handler)?;
    let mut folder = Folder::default();
    loop {
        let started = Instant::now();
        let objects = folder.rescan(&dir)?;
        dest.update(started, None, |index| index.reset(objects));
        dest.set_ready();
        if rx.recv().await.is_none() {
            return Ok(());
        }
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
    }
}

fn watch(
    dir: &Path,
    handler: impl notify::EventHandler + Clone,
) -> Result<Box<dyn Watcher + Send>, FolderError> {
    let err = |source| FolderError::Watch {
        path: dir.to_owned(),
        source,
    };
    let native = notify::recommended_watcher(handler.clone()).and_then(|mut w| {
        w.watch(dir, notify::RecursiveMode::Recursive)?;
        Ok(w)
    });
    match native {
        Ok(w) => Ok(Box::new(w)),
        Err(error) => {
            tracing::warn!(%error, path = %dir.display(), "native file watcher unavailable; polling every 250ms");
            let config = notify::Config::default().with_poll_interval(POLL);
            let mut w = notify::PollWatcher::new(handler, config).map_err(err)?;
            w.watch(dir, notify::RecursiveMode::Recursive)
                .map_err(err)?;
            Ok(Box::new(w))
        }
    }
}

// === impl Folder ===

/// The last good state of each file.
#[derive(Default)]
struct Folder {
    files: HashMap<PathBuf, FileState>,
}

struct FileState {
    text: String,
    objects: Vec<Object>,
}

impl Folder {
    /// Reads every file, keeping the last good objects of broken ones; returns all objects.
    fn rescan(&mut self, dir: &Path) -> Result<Vec<Object>, FolderError> {
        let paths = files(dir).map_err(|source| FolderError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut next = HashMap::with_capacity(paths.len());
        for path in paths {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                // Deleted or renamed since listing: the next event rescans.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "cannot read file; keeping its last good objects");
                    if let Some(old) = self.files.remove(&path) {
                        next.insert(path, old);
                    }
                    continue;
                }
            };
            let old = self.files.remove(&path);
            if let Some(old) = old.as_ref().filter(|o| o.text == text) {
                next.insert(
                    path,
                    FileState {
                        text,
                        objects: old.objects.clone(),
                    },
                );
                continue;
            }
            let (mut objects, errors) = parse_yaml(&text);
            let old_objects = old.map(|o| o.objects).unwrap_or_default();
            for error in &errors {
                tracing::warn!(file = %path.display(), %error, "skipping invalid content");
                match error {
                    ParseError::Yaml(_) => objects = old_objects.clone(),
                    ParseError::Object(ObjectError::Invalid {
                        kind,
                        namespace,
                        name,
                        ..
                    }) => {
                        let previous = old_objects.iter().find(|o| {
                            let k = o.key();
                            k.kind.as_str() == kind && k.namespace == *namespace && k.name == *name
                        });
                        objects.extend(previous.cloned());
                    }
                    ParseError::Object(_) => {}
                }
            }
            for object in &objects {
                for reason in object.warnings() {
                    let key = object.key();
                    tracing::warn!(
                        file = %path.display(),
                        kind = key.kind.as_str(),
                        namespace = %key.namespace,
                        name = %key.name,
                        %reason,
                        "object read with a problem"
                    );
                }
            }
            tracing::debug!(file = %path.display(), objects = objects.len(), "loaded");
            next.insert(path, FileState { text, objects });
        }
        self.files = next;
        let mut files: Vec<_> = self.files.iter().collect();
        files.sort_by(|a, b| a.0.cmp(b.0));
        Ok(files
            .into_iter()
            .flat_map(|(_, f)| f.objects.iter().cloned())
            .collect())
    }
}

/// Lists the YAML/JSON files under `dir`, skipping hidden entries.
fn list(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            list(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}
