//! Record framing and segment scanning.
//!
//! A segment is a file of records, each `[len: u32 LE][crc32c(payload): u32 LE][payload]`.
//! Scanning streams the file through a small buffer: memory never grows with
//! the segment, and a length over `MAX_RECORD` is refused before anything is
//! allocated for it.

use std::fs::File;
use std::io::{self, BufReader, ErrorKind, Read};
use std::path::Path;

/// Bytes of a record header.
pub const HEADER_LEN: u64 = 8;
/// Largest payload a record may hold (a batch is far smaller); anything
/// larger is corruption, refused without allocating.
pub const MAX_RECORD: u32 = 8 << 20;

/// The header of a record holding `payload`.
#[must_use]
pub fn header(payload: &[u8]) -> [u8; 8] {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    h
}

/// What reading one record found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A whole, intact record of this payload length (payload is in the buffer).
    Record(u32),
    /// Clean end of the data: no byte of a further record.
    End,
    /// The data ends inside a record (a torn write).
    Torn,
    /// A record that cannot be right: bad length or CRC.
    Corrupt(&'static str),
}

/// Reads as many bytes as possible into `buf`; returns how many (short only at EOF).
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads the next record of `r` into `payload` (reused, at most `MAX_RECORD` bytes).
///
/// # Errors
/// I/O errors of the reader.
pub fn read_record<R: Read>(r: &mut R, payload: &mut Vec<u8>) -> io::Result<Outcome> {
    let mut h = [0u8; 8];
    let n = read_full(r, &mut h)?;
    if n == 0 {
        return Ok(Outcome::End);
    }
    if n < h.len() {
        return Ok(Outcome::Torn);
    }
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || len > MAX_RECORD {
        payload.clear();
        return Ok(Outcome::Corrupt("record length out of range"));
    }
    payload.resize(len as usize, 0);
    let n = read_full(r, payload)?;
    if n < payload.len() {
        return Ok(Outcome::Torn);
    }
    if crc32c::crc32c(payload) != crc {
        return Ok(Outcome::Corrupt("CRC mismatch"));
    }
    Ok(Outcome::Record(len))
}

/// How a segment's scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belongs to an intact record.
    Clean,
    /// The last record is incomplete from `at`: a torn write, safe to cut off.
    Torn { at: u64 },
    /// A bad record at `at`. `tail_only`: nothing but zeros follows it, as
    /// when a write was cut short in a file the filesystem had extended.
    Corrupt { at: u64, reason: &'static str, tail_only: bool },
}

/// The result of scanning one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of intact records from the start.
    pub valid_len: u64,
    /// Intact records from the start.
    pub records: u64,
    pub end: ScanEnd,
    /// File length.
    pub file_len: u64,
}

/// True when every byte of `r` is zero (a preallocated or zero-filled tail).
fn rest_is_zero<R: Read>(r: &mut R) -> io::Result<bool> {
    let mut buf = [0u8; 8192];
    loop {
        let n = read_full(r, &mut buf)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        if n < buf.len() {
            return Ok(true);
        }
    }
}

/// Scans a segment file record by record.
///
/// The caller decides what a bad end means: in the segment being written it
/// is a torn write; in a sealed segment, corruption.
///
/// # Errors
/// I/O errors.
pub fn scan(path: &Path) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    scan_reader(BufReader::with_capacity(64 * 1024, file), file_len)
}

/// `scan` over any reader of `file_len` bytes (the fuzz target drives this).
///
/// # Errors
/// I/O errors of the reader.
pub fn scan_reader<R: Read>(mut r: R, file_len: u64) -> io::Result<Scan> {
    let mut payload = Vec::new();
    let mut valid_len = 0u64;
    let mut records = 0u64;
    loop {
        match read_record(&mut r, &mut payload)? {
            Outcome::Record(len) => {
                valid_len += HEADER_LEN + u64::from(len);
                records += 1;
            }
            Outcome::End => return Ok(Scan { valid_len, records, end: ScanEnd::Clean, file_len }),
            Outcome::Torn => {
                return Ok(Scan { valid_len, records, end: ScanEnd::Torn { at: valid_len }, file_len });
            }
            Outcome::Corrupt(reason) => {
                let tail_only = rest_is_zero(&mut r)?;
                return Ok(Scan {
                    valid_len,
                    records,
                    end: ScanEnd::Corrupt { at: valid_len, reason, tail_only },
                    file_len,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn rec(p: &[u8]) -> Vec<u8> {
        let mut v = header(p).to_vec();
        v.extend_from_slice(p);
        v
    }

    fn scan_bytes(b: &[u8]) -> Scan {
        scan_reader(Cursor::new(b), b.len() as u64).unwrap()
    }

    #[test]
    fn clean_segment() {
        let mut b = rec(b"one");
        b.extend(rec(b"two"));
        let s = scan_bytes(&b);
        assert_eq!((s.records, s.valid_len, s.end), (2, b.len() as u64, ScanEnd::Clean));
    }

    #[test]
    fn torn_tail_in_header_or_payload() {
        let mut b = rec(b"one");
        let whole = b.len() as u64;
        b.extend(&rec(b"two-two")[..5]);
        assert_eq!(scan_bytes(&b).end, ScanEnd::Torn { at: whole });
        let mut b = rec(b"one");
        b.extend(&rec(b"two-two")[..10]);
        assert_eq!(scan_bytes(&b).end, ScanEnd::Torn { at: whole });
    }

    #[test]
    fn zero_filled_tail_is_torn_not_corrupt() {
        let mut b = rec(b"one");
        let whole = b.len() as u64;
        b.extend([0u8; 100]);
        assert_eq!(
            scan_bytes(&b).end,
            ScanEnd::Corrupt { at: whole, reason: "record length out of range", tail_only: true }
        );
    }

    #[test]
    fn flipped_byte_in_the_middle_is_corrupt() {
        let mut b = rec(b"one");
        let at = b.len() as u64;
        b.extend(rec(b"two"));
        b.extend(rec(b"three"));
        b[at as usize + 9] ^= 0x40;
        let s = scan_bytes(&b);
        assert_eq!(s.end, ScanEnd::Corrupt { at, reason: "CRC mismatch", tail_only: false });
        assert_eq!(s.records, 1);
    }

    #[test]
    fn absurd_length_is_refused_without_allocating() {
        let mut b = vec![0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4];
        b.extend([7u8; 32]);
        assert_eq!(
            scan_bytes(&b).end,
            ScanEnd::Corrupt { at: 0, reason: "record length out of range", tail_only: false }
        );
    }
}
