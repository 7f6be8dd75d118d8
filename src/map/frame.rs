//! Record framing (`record.framing`): how records sit one after another in a file.
//!
//! - `fixed` (RECFM=F/FB): every record is the layout's length, nothing between them;
//! - `rdw` (RECFM=V/VB, as a binary transfer with RDWs carries it): each record behind a
//!   4-byte record descriptor word, its length (the RDW included) big-endian in the first
//!   two bytes, then two zero bytes; with `bdw: true` records are grouped in blocks, each
//!   behind a block descriptor word of the same form (ESS writes one record per block);
//! - `lines`: each record followed by the line end.
//!
//! [`split`] is the way back: pure, over bytes, giving each record's index and byte offset,
//! and a clear error for a truncated or malformed frame (a file still being written, or not
//! the framing the map says).
//!
//! Invariant: `split(frame(r1) ++ frame(r2) ...) == [r1, r2, ...]` for records that fit the
//! framing (a record of a `lines` file holds no line end: the map refuses binary fields there).

/// How records are delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Records of exactly this many bytes.
    Fixed(usize),
    /// Record descriptor words, optionally inside blocks.
    Rdw { bdw: bool },
    /// Records ended by these (encoded) bytes; an empty end means one record.
    Lines(Vec<u8>),
}

/// The longest record an RDW describes (32,760 bytes minus the RDW).
pub const MAX_RDW_DATA: usize = 32_756;

/// One record of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// 0-based position of the record in the file.
    pub index: usize,
    /// Byte offset of the record's data in the file.
    pub offset: usize,
    pub bytes: &'a [u8],
}

/// A file that does not split into records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {index} at byte {offset}: {message}")]
pub struct FrameError {
    /// The record (0-based) that could not be taken.
    pub index: usize,
    pub offset: usize,
    pub message: String,
}

impl Framing {
    /// Appends `data` as one framed record. RDW framing refuses records too long for a
    /// descriptor word.
    pub fn write(&self, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let start = out.len();
        out.resize(start + self.prefix_len(), 0);
        out.extend_from_slice(data);
        self.finish(out, start)
    }

    /// Bytes of descriptor words before a record's data.
    pub fn prefix_len(&self) -> usize {
        match self {
            Framing::Rdw { bdw } => 4 + 4 * usize::from(*bdw),
            _ => 0,
        }
    }

    /// Frames the record whose [`Framing::prefix_len`] placeholder bytes start at `start`
    /// of `out` and whose data follows them to the end: fills the descriptor words in place
    /// or appends the line end.
    pub fn finish(&self, out: &mut Vec<u8>, start: usize) -> Result<(), String> {
        match self {
            Framing::Fixed(_) => {}
            Framing::Lines(end) => out.extend_from_slice(end),
            Framing::Rdw { bdw } => {
                let len = out.len() - start - self.prefix_len();
                if len > MAX_RDW_DATA {
                    return Err(format!(
                        "the record is {len} bytes, more than an RDW can describe ({MAX_RDW_DATA})"
                    ));
                }
                // Checked above: at most 32,760 (+4 for the BDW), well inside u16.
                let rdw = (len + 4) as u16;
                let mut at = start;
                if *bdw {
                    out[at..at + 2].copy_from_slice(&(rdw + 4).to_be_bytes());
                    at += 4;
                }
                out[at..at + 2].copy_from_slice(&rdw.to_be_bytes());
            }
        }
        Ok(())
    }

    /// The records of `file`, in order.
    pub fn split<'a>(&self, file: &'a [u8]) -> Split<'a> {
        Split {
            framing: self.clone(),
            file,
            pos: 0,
            index: 0,
            block_end: None,
            failed: false,
        }
    }
}

/// The records of a file: see [`Framing::split`]. After an error it ends.
#[derive(Debug, Clone)]
pub struct Split<'a> {
    framing: Framing,
    file: &'a [u8],
    pos: usize,
    index: usize,
    /// With BDWs: where the current block ends.
    block_end: Option<usize>,
    failed: bool,
}

impl<'a> Split<'a> {
    fn fail(&mut self, offset: usize, message: String) -> Option<Result<Frame<'a>, FrameError>> {
        self.failed = true;
        Some(Err(FrameError {
            index: self.index,
            offset,
            message,
        }))
    }

    fn take(&mut self, offset: usize, len: usize) -> Option<Result<Frame<'a>, FrameError>> {
        let f = Frame {
            index: self.index,
            offset,
            bytes: &self.file[offset..offset + len],
        };
        self.index += 1;
        Some(Ok(f))
    }

    /// A 4-byte descriptor word at `at`: its length field.
    fn descriptor(&self, at: usize) -> Option<(usize, [u8; 2])> {
        let d = self.file.get(at..at + 4)?;
        Some((usize::from(u16::from_be_bytes([d[0], d[1]])), [d[2], d[3]]))
    }
}

impl<'a> Iterator for Split<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let file = self.file;
        match self.framing.clone() {
            Framing::Fixed(len) => {
                if self.pos >= file.len() {
                    return None;
                }
                let at = self.pos;
                if len == 0 {
                    return self.fail(at, "the layout has no bytes".into());
                }
                if file.len() - at < len {
                    return self.fail(at, format!(
                        "the last record is {} bytes, a record is {len} (a truncated file, or not fixed-length records of this layout)",
                        file.len() - at
                    ));
                }
                self.pos += len;
                self.take(at, len)
            }
            Framing::Lines(end) => {
                if self.pos >= file.len() {
                    return None;
                }
                let at = self.pos;
                if end.is_empty() {
                    self.pos = file.len();
                    return self.take(at, file.len() - at);
                }
                match file[at..].windows(end.len()).position(|w| w == end.as_slice()) {
                    Some(i) => {
                        self.pos = at + i + end.len();
                        self.take(at, i)
                    }
                    None => self.fail(at, format!(
                        "the last record has no line end ({} bytes; a file still being written?)",
                        file.len() - at
                    )),
                }
            }
            Framing::Rdw { bdw } => {
                if bdw && self.block_end.is_none_or(|e| self.pos >= e) {
                    if let Some(e) = self.block_end {
                        if self.pos > e {
                            return self
                                .fail(self.pos, "a record runs past the end of its block".into());
                        }
                    }
                    if self.pos >= file.len() {
                        return None;
                    }
                    let at = self.pos;
                    let Some((len, tail)) = self.descriptor(at) else {
                        return self.fail(
                            at,
                            format!(
                                "a block descriptor word needs 4 bytes; the file ends after {}",
                                file.len() - at
                            ),
                        );
                    };
                    if len & 0x8000 != 0 {
                        return self.fail(at, "an extended (over 32,767 bytes) block descriptor word is not supported".into());
                    }
                    if tail != [0, 0] || len < 8 {
                        return self.fail(
                            at,
                            format!(
                                "bytes {:02X}{:02X}{:02X}{:02X} are not a block descriptor word",
                                file[at],
                                file[at + 1],
                                tail[0],
                                tail[1]
                            ),
                        );
                    }
                    if at + len > file.len() {
                        return self.fail(
                            at,
                            format!(
                                "the block says {len} bytes; the file ends after {}",
                                file.len() - at
                            ),
                        );
                    }
                    self.block_end = Some(at + len);
                    self.pos = at + 4;
                }
                if self.pos >= file.len() {
                    return None;
                }
                let at = self.pos;
                let Some((len, tail)) = self.descriptor(at) else {
                    return self.fail(at, format!(
                        "a record descriptor word needs 4 bytes; the file ends after {} (a truncated file?)",
                        file.len() - at
                    ));
                };
                if tail != [0, 0] {
                    let what = if tail[0] != 0 {
                        "a spanned record segment (RECFM=VS), which is not supported"
                    } else {
                        "not a record descriptor word (its last two bytes must be zero)"
                    };
                    return self.fail(
                        at,
                        format!(
                            "bytes {:02X}{:02X}{:02X}{:02X}: {what}",
                            file[at],
                            file[at + 1],
                            tail[0],
                            tail[1]
                        ),
                    );
                }
                if len < 4 {
                    return self.fail(
                        at,
                        format!("the record descriptor word says {len} bytes, less than itself"),
                    );
                }
                let limit = self.block_end.unwrap_or(file.len());
                if at + len > limit {
                    let whole = if self.block_end.is_some() {
                        "its block"
                    } else {
                        "the file"
                    };
                    return self.fail(at, format!(
                        "the record descriptor word says {len} bytes; {whole} ends after {} (a truncated file?)",
                        limit - at
                    ));
                }
                self.pos = at + len;
                self.take(at + 4, len - 4)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(f: &Framing, file: &[u8]) -> Result<Vec<(usize, Vec<u8>)>, FrameError> {
        f.split(file)
            .map(|r| r.map(|fr| (fr.offset, fr.bytes.to_vec())))
            .collect()
    }

    #[test]
    fn framing_round_trips() {
        let recs: [&[u8]; 3] = [b"abc", b"", b"defgh"];
        for f in [
            Framing::Rdw { bdw: false },
            Framing::Rdw { bdw: true },
            Framing::Lines(b"\r\n".to_vec()),
        ] {
            let mut file = Vec::new();
            for r in recs {
                f.write(r, &mut file).unwrap();
            }
            let got: Vec<Vec<u8>> = all(&f, &file)
                .unwrap()
                .into_iter()
                .map(|(_, b)| b)
                .collect();
            assert_eq!(got, recs.map(<[u8]>::to_vec), "{f:?}");
        }
        let mut file = Vec::new();
        Framing::Rdw { bdw: false }
            .write(b"abc", &mut file)
            .unwrap();
        assert_eq!(file, [0, 7, 0, 0, b'a', b'b', b'c']);
        assert_eq!(
            all(&Framing::Fixed(2), b"abcd").unwrap(),
            [(0, b"ab".to_vec()), (2, b"cd".to_vec())]
        );
    }

    #[test]
    fn truncated_and_foreign_frames_are_errors() {
        let e = all(&Framing::Fixed(3), b"abcde").unwrap_err();
        assert_eq!((e.index, e.offset), (1, 3));
        assert!(e.message.contains("the last record is 2 bytes"), "{e}");
        let e = all(&Framing::Rdw { bdw: false }, &[0, 8, 0, 0, 1, 2]).unwrap_err();
        assert!(e.message.contains("says 8 bytes"), "{e}");
        let e = all(&Framing::Rdw { bdw: false }, &[0, 5, 0, 0, 1, 0, 5]).unwrap_err();
        assert_eq!((e.index, e.offset), (1, 5));
        let e = all(&Framing::Rdw { bdw: false }, &[0, 5, 1, 0, 9]).unwrap_err();
        assert!(e.message.contains("spanned"), "{e}");
        let e = all(&Framing::Lines(b"\n".to_vec()), b"a\nb").unwrap_err();
        assert_eq!((e.index, e.offset), (1, 2));
        // A block whose records overrun it.
        let e = all(&Framing::Rdw { bdw: true }, &[0, 9, 0, 0, 0, 6, 0, 0, 1, 2]).unwrap_err();
        assert!(e.message.contains("its block"), "{e}");
        // Two records in one block.
        let block = [0, 14, 0, 0, 0, 5, 0, 0, 7, 0, 5, 0, 0, 8];
        let got = all(&Framing::Rdw { bdw: true }, &block).unwrap();
        assert_eq!(got, [(8, vec![7]), (13, vec![8])]);
    }
}
