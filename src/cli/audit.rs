//! `zester audit verify|tail`: the local audit trail, read from the home's files (no
//! appliance needed). The chain and the filters are `wire::audit`'s; here are the files.
//!
//! Files are read oldest first: `audit.log.N` … `audit.log.1`, then `audit.log`. `tail
//! --follow` keeps the live file open and reads what is appended; when the writer rotates
//! (the open file becomes `audit.log.1` and a new `audit.log` appears) it reads the old file to
//! its end, then goes on with the new one, so nothing written across a rotation is missed.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::output::Output;
use crate::home::Home;
use crate::identity::time::{parse_duration, rfc3339, DurationError};
use crate::wire::audit::{self, Filter, Line, Report};

/// Why an audit command failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditCommandError {
    /// No file to read.
    #[error("no audit log in {0} (zester up writes audit.log there)")]
    NoLog(PathBuf),
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A bad `--since`.
    #[error("--since: {0}")]
    Since(DurationError),
    /// Writing to stdout failed (other than a closed pipe).
    #[error("writing the output: {0}")]
    Output(std::io::Error),
}

fn read(path: &Path) -> Result<String, AuditCommandError> {
    let bytes = std::fs::read(path).map_err(|source| AuditCommandError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // A changed byte may leave invalid UTF-8: the line still reads, and no longer links.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The files to read: those given, else the home's, oldest first.
fn files_or_home(home: &Home, files: &[PathBuf]) -> Result<Vec<PathBuf>, AuditCommandError> {
    let files = if files.is_empty() {
        home.audit_files()
    } else {
        files.to_vec()
    };
    if files.is_empty() {
        return Err(AuditCommandError::NoLog(home.root().to_path_buf()));
    }
    Ok(files)
}

/// `zester audit verify [FILE…]`: checks the hash chain over the files (given oldest first,
/// default the home's) and names the first break. Exit 0 when intact, 1 at a break.
pub fn verify(home: &Home, files: &[PathBuf]) -> Result<Output, AuditCommandError> {
    let files = files_or_home(home, files)?;
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|path| Ok((path.display().to_string(), read(path)?)))
        .collect::<Result<_, AuditCommandError>>()?;
    let report = audit::verify(texts.iter().flat_map(|(file, text)| {
        text.split('\n').enumerate().map(move |(i, line)| Line {
            file,
            number: i + 1,
            text: line,
        })
    }));
    Ok(verify_output(&files, &report))
}

fn verify_output(files: &[PathBuf], report: &Report) -> Output {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut human = String::new();
    match &report.first_break {
        None => human.push_str(&format!(
            "audit chain intact: {} records in {} file(s), {} … {}\n",
            report.lines - report.unchained,
            files.len(),
            names.first().map_or("", String::as_str),
            names.last().map_or("", String::as_str),
        )),
        Some(found) => human.push_str(&format!("audit chain BROKEN at {found}\n")),
    }
    for (node, chain) in &report.nodes {
        let start = if chain.from_genesis {
            "from the chain's start".to_string()
        } else {
            format!(
                "the first linking to record {} (prev {}), no longer kept: taken on trust",
                chain.first_seq.saturating_sub(1),
                chain.anchor
            )
        };
        human.push_str(&format!(
            "node {node}: records {}–{} ({} read), {start}; last hash {}\n",
            chain.first_seq, chain.last_seq, chain.records, chain.head
        ));
    }
    if report.unchained > 0 {
        human.push_str(&format!(
            "{} older lines carry no chain (written before it began): not checked\n",
            report.unchained
        ));
    }
    Output {
        human,
        json: json!({
            "intact": report.intact(),
            "files": names,
            "lines": report.lines,
            "unchained": report.unchained,
            "nodes": report.nodes,
            "break": report.first_break,
        }),
        exit_code: if report.intact() { 0 } else { 1 },
    }
}

/// What `zester audit tail` was asked.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// `--peel`, `--code`, `--since` (already resolved, see [`since`]).
    pub filter: Filter,
    /// `--lines N`: how many of the last matching records to print first (0 = all).
    pub lines: usize,
    /// `--follow`.
    pub follow: bool,
    /// `--json`: each record as the JSON line written.
    pub json: bool,
}

/// `--since DUR` at `now`: the RFC 3339 time that long ago.
pub fn since(text: &str, now: i64) -> Result<String, AuditCommandError> {
    let secs = parse_duration(text).map_err(AuditCommandError::Since)?;
    Ok(rfc3339(now - secs))
}

/// How often `--follow` looks for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Prints a record line if it passes the filter; `false` once the reader went away.
fn emit(
    out: &mut impl Write,
    line: &str,
    options: &TailOptions,
) -> Result<bool, AuditCommandError> {
    let Ok(record) = serde_json::from_str::<Value>(line) else {
        return Ok(true);
    };
    if !options.filter.matches(&record) {
        return Ok(true);
    }
    let text = if options.json {
        line.to_string()
    } else {
        audit::render(&record)
    };
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(AuditCommandError::Output(e)),
    }
}

/// `zester audit tail`: the last matching records of the home's files, then with `follow`
/// every new one as it is written, across rotations, until the reader goes away.
pub fn tail(
    home: &Home,
    options: &TailOptions,
    out: &mut impl Write,
) -> Result<(), AuditCommandError> {
    let live = home.audit_log();
    // The live file is opened first and its history read through that handle, so `--follow`
    // goes on exactly where the history ended, even if the writer rotates meanwhile.
    let mut reading: Option<(std::fs::File, u64)> = open_live(&live);
    let mut texts: Vec<String> = Vec::new();
    for file in home.audit_files().iter().filter(|f| **f != live) {
        texts.push(read(file)?);
    }
    let mut position = 0;
    if let Some((file, _)) = reading.as_mut() {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|source| AuditCommandError::Read {
                path: live.clone(),
                source,
            })?;
        // A line still being written is left for `--follow`.
        let complete = bytes
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |end| end + 1);
        position = complete as u64;
        texts.push(String::from_utf8_lossy(&bytes[..complete]).into_owned());
    }
    let mut last: VecDeque<String> = VecDeque::new();
    for line in texts.iter().flat_map(|text| text.lines()) {
        let matches =
            serde_json::from_str::<Value>(line).is_ok_and(|record| options.filter.matches(&record));
        if matches {
            last.push_back(line.to_string());
            if options.lines > 0 && last.len() > options.lines {
                last.pop_front();
            }
        }
    }
    for line in &last {
        if !emit(out, line, options)? {
            return Ok(());
        }
    }
    if !options.follow {
        return Ok(());
    }
    let mut partial = String::new();
    loop {
        if reading.is_none() {
            reading = open_live(&live);
            position = 0;
        }
        let mut rotated = false;
        if let Some((file, inode)) = reading.as_mut() {
            let mut chunk = Vec::new();
            if file.seek(SeekFrom::Start(position)).is_ok() {
                if let Ok(read) = file.read_to_end(&mut chunk) {
                    position += read as u64;
                }
            }
            partial.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = partial.find('\n') {
                let line: String = partial.drain(..=end).collect();
                if !emit(out, line.trim_end_matches('\n'), options)? {
                    return Ok(());
                }
            }
            // Everything of the open file is read: another file at the path is a rotation.
            rotated = std::fs::metadata(&live).is_ok_and(|m| m.ino() != *inode);
        }
        if rotated {
            reading = None;
            partial.clear();
            continue;
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// The live file and its inode, if it exists.
fn open_live(live: &Path) -> Option<(std::fs::File, u64)> {
    let file = std::fs::File::open(live).ok()?;
    let inode = file.metadata().ok()?.ino();
    Some((file, inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_that_long_ago() {
        assert_eq!(since("10m", 600).unwrap(), rfc3339(0));
        assert!(since("ten minutes", 0).is_err());
    }
}
