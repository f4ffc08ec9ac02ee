//! The package archive: a strict subset of POSIX ustar, written and read here (about 300 lines
//! instead of the `tar` crate, and strict where `tar` is lenient).
//!
//! Packages are produced by this crate only, so the reader accepts exactly what the writer
//! produces and refuses the rest: only regular files, no extended (pax/GNU) headers, names made of
//! safe components, checksum and field formats as written, zero padding after each file, two zero
//! end blocks and nothing but zeros after them. A consequence the tests rely on: flipping any byte
//! of an archive makes reading or verification fail; no byte is outside the checked structure.
//!
//! The output is an ordinary tar file (`tar tf package.emp` lists it).

use std::io::{self, Read, Write};

use crate::error::PackageError;

/// Size of a tar block.
pub const BLOCK: usize = 512;

/// Longest member name (the ustar `name` field; packages never need the `prefix` field).
pub const MAX_NAME_LEN: usize = 100;

/// Bounds on what a reader accepts, so a hostile archive cannot exhaust memory or disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most members (manifest and signature included).
    pub max_files: usize,
    /// Largest single member.
    pub max_file_bytes: u64,
    /// Largest sum of member sizes.
    pub max_total_bytes: u64,
    /// Largest `manifest.json`.
    pub max_manifest_bytes: u64,
    /// Largest `manifest.sig`.
    pub max_signature_bytes: u64,
}

impl Default for Limits {
    /// 1024 files, 4 GiB per file, 8 GiB in total, 1 MiB of manifest, 4 KiB of signature.
    fn default() -> Self {
        Self {
            max_files: 1024,
            max_file_bytes: 4 << 30,
            max_total_bytes: 8 << 30,
            max_manifest_bytes: 1 << 20,
            max_signature_bytes: 4 << 10,
        }
    }
}

/// Checks a member name: relative, `/`-separated components of ASCII letters, digits, `.`, `_`
/// and `-`, none of them empty, `.` or `..`, no component starting with `.` (no hidden files), at
/// most [`MAX_NAME_LEN`] bytes and 8 levels deep.
pub fn check_name(name: &str) -> Result<(), PackageError> {
    let unsafe_path = |reason| PackageError::UnsafePath {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(unsafe_path("empty name"));
    }
    if name.starts_with('/') {
        return Err(unsafe_path("absolute path"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(unsafe_path("longer than 100 bytes"));
    }
    let components: Vec<&str> = name.split('/').collect();
    if components.len() > 8 {
        return Err(unsafe_path("more than 8 levels deep"));
    }
    for c in components {
        if c == ".." {
            return Err(unsafe_path("contains '..'"));
        }
        if c.is_empty() || c == "." {
            return Err(unsafe_path("empty or '.' path component"));
        }
        if c.starts_with('.') {
            return Err(unsafe_path("hidden path component"));
        }
        if !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(unsafe_path(
                "only ASCII letters, digits, '.', '_', '-' and '/' are allowed",
            ));
        }
    }
    Ok(())
}

fn octal_field(field: &mut [u8], value: u64) {
    // Digits, then a NUL terminator, as GNU tar and POSIX write numeric fields.
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

fn checksum(block: &[u8; BLOCK]) -> u64 {
    // The checksum field itself counts as eight spaces.
    block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(*b)
            }
        })
        .sum()
}

/// A ustar header block for a regular file (or, in tests, any type flag and link name).
pub(crate) fn header_block(name: &str, size: u64, mtime: u64, typeflag: u8, linkname: &str) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal_field(&mut h[100..108], 0o644);
    octal_field(&mut h[108..116], 0);
    octal_field(&mut h[116..124], 0);
    octal_field(&mut h[124..136], size);
    octal_field(&mut h[136..148], mtime);
    h[156] = typeflag;
    h[157..157 + linkname.len()].copy_from_slice(linkname.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal_field(&mut h[329..337], 0);
    octal_field(&mut h[337..345], 0);
    let sum = checksum(&h);
    h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// Writes package archives.
#[derive(Debug)]
pub struct ArchiveWriter<W: Write> {
    inner: W,
    mtime: u64,
}

impl<W: Write> ArchiveWriter<W> {
    /// A writer whose members all carry `mtime` (the package's creation time, so archives are
    /// reproducible).
    pub fn new(inner: W, mtime: u64) -> Self {
        Self { inner, mtime }
    }

    /// Appends a regular file of exactly `size` bytes read from `content`.
    pub fn append(&mut self, name: &str, size: u64, content: &mut dyn Read) -> io::Result<()> {
        check_name(name).map_err(io::Error::other)?;
        // 11 octal digits.
        if size >= 1 << 33 {
            return Err(io::Error::other(format!("'{name}' is larger than 8 GiB")));
        }
        self.inner
            .write_all(&header_block(name, size, self.mtime, b'0', ""))?;
        let copied = io::copy(&mut content.take(size), &mut self.inner)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("'{name}' changed while being packaged: expected {size} bytes, read {copied}"),
            ));
        }
        self.inner.write_all(&[0u8; BLOCK][..padding(size)])
    }

    /// Writes the two end blocks and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&[0u8; 2 * BLOCK])?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// One member's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its name (checked with [`check_name`]).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Reads package archives member by member, checking structure and limits as it goes.
#[derive(Debug)]
pub struct ArchiveReader<R: Read> {
    inner: R,
    limits: Limits,
    files: usize,
    total: u64,
    /// Content bytes of the current member not yet consumed.
    pending: Option<u64>,
    /// Name of the current member (for errors).
    current: String,
    /// Bytes consumed so far (for errors).
    position: u64,
    done: bool,
}

/// Fills `buf` completely or reports truncation.
fn read_exact_or_truncated(r: &mut impl Read, buf: &mut [u8]) -> Result<(), PackageError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => PackageError::archive("truncated"),
        _ => PackageError::archive(format!("read failed: {e}")),
    })
}

/// Text of a NUL-terminated field; everything after the terminator must be NUL too.
fn text_field<'a>(field: &'a [u8], what: &str) -> Result<&'a str, PackageError> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    if field[end..].iter().any(|b| *b != 0) {
        return Err(PackageError::archive(format!(
            "{what} field has data after its end"
        )));
    }
    std::str::from_utf8(&field[..end]).map_err(|_| PackageError::archive(format!("{what} is not UTF-8")))
}

/// An octal field as the writer writes it: digits only, then one NUL.
fn octal_value(field: &[u8], what: &str) -> Result<u64, PackageError> {
    let (last, digits) = field.split_last().expect("tar numeric fields are not empty");
    if *last != 0 || digits.is_empty() || !digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(PackageError::archive(format!("{what} field is not octal")));
    }
    digits
        .iter()
        .try_fold(0u64, |acc, d| acc.checked_mul(8).map(|a| a + u64::from(d - b'0')))
        .ok_or_else(|| PackageError::archive(format!("{what} field overflows")))
}

impl<R: Read> ArchiveReader<R> {
    /// A reader with the given limits.
    pub fn new(inner: R, limits: Limits) -> Self {
        Self {
            inner,
            limits,
            files: 0,
            total: 0,
            pending: None,
            current: String::new(),
            position: 0,
            done: false,
        }
    }

    /// The next member's header, or `None` at the end of the archive. Unconsumed content of the
    /// previous member is skipped (and its padding still checked).
    pub fn next_member(&mut self) -> Result<Option<Member>, PackageError> {
        if self.pending.is_some() {
            self.copy_content(&mut io::sink())?;
        }
        if self.done {
            return Ok(None);
        }
        let mut block = [0u8; BLOCK];
        let header_at = self.position;
        read_exact_or_truncated(&mut self.inner, &mut block)?;
        self.position += BLOCK as u64;
        if block.iter().all(|b| *b == 0) {
            // End of archive: a second zero block, then only zeros (tar tools pad to records).
            read_exact_or_truncated(&mut self.inner, &mut block)?;
            if block.iter().any(|b| *b != 0) {
                return Err(PackageError::archive("data in the end-of-archive blocks"));
            }
            let mut rest = [0u8; 8192];
            loop {
                let n = self
                    .inner
                    .read(&mut rest)
                    .map_err(|e| PackageError::archive(format!("read failed: {e}")))?;
                if n == 0 {
                    break;
                }
                if rest[..n].iter().any(|b| *b != 0) {
                    return Err(PackageError::archive("data after the end of the archive"));
                }
            }
            self.done = true;
            return Ok(None);
        }
        let member = self.parse_header(&block).map_err(|e| match e {
            PackageError::Archive { reason } => {
                PackageError::archive(format!("{reason} (header at byte {header_at})"))
            }
            other => other,
        })?;
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(PackageError::TooManyFiles {
                limit: self.limits.max_files,
            });
        }
        if member.size > self.limits.max_file_bytes {
            return Err(PackageError::TooLarge {
                what: member.name,
                size: member.size,
                limit: self.limits.max_file_bytes,
            });
        }
        self.total += member.size;
        if self.total > self.limits.max_total_bytes {
            return Err(PackageError::TooLarge {
                what: "the package's files together".into(),
                size: self.total,
                limit: self.limits.max_total_bytes,
            });
        }
        self.pending = Some(member.size);
        self.current.clone_from(&member.name);
        Ok(Some(member))
    }

    fn parse_header(&self, h: &[u8; BLOCK]) -> Result<Member, PackageError> {
        let stored = &h[148..156];
        let sum_ok = stored[6] == 0
            && stored[7] == b' '
            && stored[..6].iter().all(|b| (b'0'..=b'7').contains(b))
            && octal_value(&stored[..7], "checksum")? == checksum(h);
        if !sum_ok {
            return Err(PackageError::archive("header checksum mismatch"));
        }
        if &h[257..263] != b"ustar\0" || &h[263..265] != b"00" {
            return Err(PackageError::archive("not a ustar header"));
        }
        let name = text_field(&h[..100], "name")?.to_owned();
        let prefix = text_field(&h[345..500], "prefix")?;
        if !prefix.is_empty() {
            return Err(PackageError::UnsafePath {
                name: format!("{prefix}/{name}"),
                reason: "longer than 100 bytes",
            });
        }
        let kind = match h[156] {
            b'0' => None,
            0 => Some("regular file in the pre-POSIX format"),
            b'1' => Some("hard link"),
            b'2' => Some("symbolic link"),
            b'3' => Some("character device"),
            b'4' => Some("block device"),
            b'5' => Some("directory"),
            b'6' => Some("FIFO"),
            b'7' => Some("contiguous file"),
            b'x' | b'g' => Some("pax extended header"),
            b'L' | b'K' => Some("GNU long-name header"),
            _ => Some("member of unknown type"),
        };
        if let Some(kind) = kind {
            return Err(PackageError::NotRegularFile { name, kind });
        }
        if !text_field(&h[157..257], "link name")?.is_empty() {
            return Err(PackageError::archive(format!("'{name}' has a link name")));
        }
        check_name(&name)?;
        if h[500..].iter().any(|b| *b != 0) {
            return Err(PackageError::archive("header padding is not zero"));
        }
        let size = octal_value(&h[124..136], "size")?;
        for (range, what) in [
            (100..108, "mode"),
            (108..116, "uid"),
            (116..124, "gid"),
            (136..148, "mtime"),
            (329..337, "devmajor"),
            (337..345, "devminor"),
        ] {
            octal_value(&h[range], what)?;
        }
        text_field(&h[265..297], "uname")?;
        text_field(&h[297..329], "gname")?;
        Ok(Member { name, size })
    }

    /// The underlying reader (after [`ArchiveReader::next_member`] returned `None`, fully consumed).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Copies the current member's content into `sink` and checks its padding. Returns the size.
    pub fn copy_content(&mut self, sink: &mut dyn Write) -> Result<u64, PackageError> {
        let Some(size) = self.pending.take() else {
            return Err(PackageError::archive("no member to read"));
        };
        let copied = io::copy(&mut (&mut self.inner).take(size), sink)
            .map_err(|e| PackageError::archive(format!("read failed: {e}")))?;
        if copied != size {
            return Err(PackageError::archive(format!("truncated in '{}'", self.current)));
        }
        let mut pad = [0u8; BLOCK];
        let pad = &mut pad[..padding(size)];
        read_exact_or_truncated(&mut self.inner, pad)?;
        self.position += size + pad.len() as u64;
        if pad.iter().any(|b| *b != 0) {
            return Err(PackageError::archive(format!(
                "padding after '{}' is not zero",
                self.current
            )));
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = ArchiveWriter::new(Vec::new(), 1_700_000_000);
        for (name, content) in members {
            w.append(name, content.len() as u64, &mut &content[..]).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, PackageError> {
        let mut r = ArchiveReader::new(bytes, Limits::default());
        let mut out = Vec::new();
        while let Some(m) = r.next_member()? {
            let mut content = Vec::new();
            r.copy_content(&mut content)?;
            out.push((m.name, content));
        }
        Ok(out)
    }

    #[test]
    fn members_round_trip_with_block_alignment() {
        let big = vec![7u8; 1500];
        let bytes = archive(&[("a.txt", b"hello"), ("dir/b.bin", &big), ("empty", b"")]);
        assert_eq!(bytes.len(), 512 + 512 + 512 + 1536 + 512 + 1024);
        let members = read_all(&bytes).unwrap();
        assert_eq!(members[0], ("a.txt".to_owned(), b"hello".to_vec()));
        assert_eq!(members[1].1, big);
        assert_eq!(members[2], ("empty".to_owned(), vec![]));
        // Trailing zero records (as tar tools write) are fine; anything else after the end is not.
        let mut padded = bytes.clone();
        padded.extend([0u8; 10240]);
        assert_eq!(read_all(&padded).unwrap().len(), 3);
        let mut junk = bytes;
        junk.push(1);
        assert!(read_all(&junk).unwrap_err().to_string().contains("after the end"));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let bytes = archive(&[("a.txt", b"hello"), ("b", b"")]);
        let original = read_all(&bytes).unwrap();
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            match read_all(&t) {
                Err(_) => {}
                // Only content bytes may change silently at this level (the manifest's digests
                // catch those); everything structural must fail.
                Ok(members) => {
                    assert_ne!(members, original, "flip at {i} went unnoticed");
                    assert!(
                        (512..517).contains(&i),
                        "structural byte {i} flipped without error"
                    );
                }
            }
        }
    }

    #[test]
    fn truncation_is_an_error() {
        let bytes = archive(&[("a.txt", b"hello")]);
        for len in [0, 100, 512, 600, 1024, 1536] {
            let e = read_all(&bytes[..len]).unwrap_err();
            assert!(e.to_string().contains("truncated"), "{len}: {e}");
        }
    }

    #[test]
    fn path_tricks_and_non_files_are_refused() {
        let raw = |name: &str, typeflag: u8, link: &str| {
            let mut v = header_block(name, 0, 0, typeflag, link).to_vec();
            v.extend([0u8; 1024]);
            v
        };
        for (bytes, needle) in [
            (raw("../evil", b'0', ""), "contains '..'"),
            (raw("a/../../evil", b'0', ""), "contains '..'"),
            (raw("/etc/passwd", b'0', ""), "absolute path"),
            (raw("a//b", b'0', ""), "empty or '.'"),
            (raw("./a", b'0', ""), "empty or '.'"),
            (raw(".bashrc", b'0', ""), "hidden"),
            (raw("a\\..\\b", b'0', ""), "only ASCII letters"),
            (raw("a b", b'0', ""), "only ASCII letters"),
            (raw("link", b'2', "/etc/passwd"), "symbolic link"),
            (raw("hard", b'1', "manifest.json"), "hard link"),
            (raw("dir", b'5', ""), "directory"),
            (raw("pax", b'x', ""), "pax extended header"),
            (raw("long", b'L', ""), "GNU long-name"),
            (raw("fifo", b'6', ""), "FIFO"),
            (raw("sneaky", b'0', "target"), "has a link name"),
        ] {
            let e = read_all(&bytes).unwrap_err().to_string();
            assert!(e.contains(needle), "expected '{needle}': {e}");
        }
        let mut w = ArchiveWriter::new(Vec::new(), 0);
        assert!(
            w.append("../x", 0, &mut &b""[..]).is_err(),
            "the writer refuses them too"
        );
    }

    #[test]
    fn limits_bound_count_and_sizes() {
        let bytes = archive(&[("a", &[1u8; 1000]), ("b", &[2u8; 1000]), ("c", b"x")]);
        let read = |limits| {
            let mut r = ArchiveReader::new(&bytes[..], limits);
            while r.next_member()?.is_some() {}
            Ok::<_, PackageError>(())
        };
        let base = Limits::default();
        let e = read(Limits { max_files: 2, ..base }).unwrap_err();
        assert!(matches!(e, PackageError::TooManyFiles { limit: 2 }), "{e}");
        let e = read(Limits {
            max_file_bytes: 999,
            ..base
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("a (1000 bytes) exceeds the limit of 999"),
            "{e}"
        );
        let e = read(Limits {
            max_total_bytes: 1500,
            ..base
        })
        .unwrap_err();
        assert!(e.to_string().contains("together (2000 bytes)"), "{e}");
        read(base).unwrap();
    }
}
