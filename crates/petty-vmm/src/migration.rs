//! QEMU's migration stream, split as it arrives: the pages of one RAM
//! block go into a file of their own, everything else into the state file.
//!
//! A snapshot's children map its RAM file privately (they share its pages
//! in the page cache until they write them), so a snapshot of a VM whose
//! RAM is not such a file already needs its RAM written out as one. QEMU
//! writes RAM only inside its migration stream; rather than save the
//! stream, load it into a second VM whose RAM is the file and save again
//! (a second QEMU and two passes over the RAM), the stream is read here as
//! QEMU sends it: each page record of the chosen block is written at its
//! offset in the RAM file and dropped from the stream, and what remains is
//! exactly the stream QEMU itself writes when that block is shared and
//! `x-ignore-shared` is on (the source has the capability on, so the block
//! list already carries every block's address).
//!
//! The layout read here is QEMU's precopy format (`migration/savevm.c`,
//! `migration/ram.c`), for a stopped VM whose only iterable section is
//! `ram`: header, configuration, the `ram` section's start, parts and end,
//! then the devices' sections, copied through unread. Anything else (a
//! compressed page, an XBZRLE page, another iterable section) is refused
//! with an error naming it, so a QEMU that writes otherwise fails a
//! snapshot instead of writing a wrong one.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::FileExt;

const MAGIC: u32 = 0x5145_564d;
const VERSION: u32 = 3;

const VM_EOF: u8 = 0x00;
const SECTION_START: u8 = 0x01;
const SECTION_PART: u8 = 0x02;
const SECTION_END: u8 = 0x03;
const SUBSECTION: u8 = 0x05;
const CONFIGURATION: u8 = 0x07;
const SECTION_FOOTER: u8 = 0x7e;

const PAGE_SIZE: u64 = 4096;
const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;
const FLAG_XBZRLE: u64 = 0x40;
const FLAG_HOOK: u64 = 0x80;
const FLAG_COMPRESS: u64 = 0x100;

/// What a split wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Split {
    /// Bytes of the state (the stream without the block's pages).
    pub state_bytes: u64,
    /// Pages of the block written to the RAM file (zero pages are holes).
    pub pages: u64,
    /// Pages of the block that were zero.
    pub zero_pages: u64,
    /// The block's size, which the RAM file is given.
    pub block_bytes: u64,
}

/// Reads a migration stream from `input` to its end, writing the pages of
/// RAM block `block` into `ram` (given the block's size; pages never sent
/// or sent as zero are holes) and the rest to `state`.
pub fn split(input: impl Read, state: impl Write, ram: &File, block: &str) -> io::Result<Split> {
    let mut s = Splitter {
        input: io::BufReader::with_capacity(1 << 20, input),
        state: Counted {
            inner: io::BufWriter::with_capacity(1 << 16, state),
            bytes: 0,
        },
        ram: RamWriter::new(ram),
        block: block.as_bytes().to_vec(),
        ram_section: None,
        current: None,
        split: Split::default(),
    };
    s.run()?;
    s.ram.flush()?;
    s.state.inner.flush()?;
    s.split.state_bytes = s.state.bytes;
    if s.split.block_bytes == 0 {
        return Err(bad(format!(
            "the stream's RAM blocks have no block named {block:?}"
        )));
    }
    Ok(s.split)
}

fn bad(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Counted<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.bytes += b.len() as u64;
        self.inner.write_all(b)
    }
}

/// Page writes, gathered into runs of neighbouring pages.
struct RamWriter<'a> {
    file: &'a File,
    at: u64,
    buf: Vec<u8>,
    /// Pages written so far: a zero page over one of them writes zeros.
    written: Vec<u64>,
    /// The block's size (0 until the block list gave it).
    len: u64,
}

impl<'a> RamWriter<'a> {
    fn new(file: &'a File) -> Self {
        RamWriter {
            file,
            at: 0,
            buf: Vec::with_capacity(1 << 20),
            written: Vec::new(),
            len: 0,
        }
    }

    fn size(&mut self, bytes: u64) -> io::Result<()> {
        self.file.set_len(bytes)?;
        self.len = bytes;
        self.written = vec![0; (bytes / PAGE_SIZE).div_ceil(64) as usize];
        Ok(())
    }

    /// The word and bit of `offset`'s page in `written`.
    fn bit(&self, offset: u64) -> io::Result<(usize, u64)> {
        let page = offset / PAGE_SIZE;
        let word = (page / 64) as usize;
        if offset >= self.len {
            return Err(bad(format!(
                "a page at {offset:#x} lies past the RAM block's end"
            )));
        }
        Ok((word, 1 << (page % 64)))
    }

    fn page(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let (word, bit) = self.bit(offset)?;
        self.written[word] |= bit;
        if self.buf.is_empty() || self.at + self.buf.len() as u64 != offset {
            self.flush()?;
            self.at = offset;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    /// A page of `fill` bytes; true when it is left a hole (zeros over
    /// a page never written).
    fn zero(&mut self, offset: u64, fill: u8) -> io::Result<bool> {
        let (word, bit) = self.bit(offset)?;
        if fill != 0 || self.written[word] & bit != 0 {
            self.page(offset, &[fill; PAGE_SIZE as usize])?;
            return Ok(false);
        }
        Ok(true)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.at)?;
            self.buf.clear();
        }
        Ok(())
    }
}

struct Splitter<'a, R, W: Write> {
    input: io::BufReader<R>,
    state: Counted<io::BufWriter<W>>,
    ram: RamWriter<'a>,
    block: Vec<u8>,
    /// The `ram` section's id, once its start is read.
    ram_section: Option<u32>,
    /// The block the last page record named (what `CONTINUE` refers to).
    current: Option<Vec<u8>>,
    split: Split,
}

impl<R: Read, W: Write> Splitter<'_, R, W> {
    fn read<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut b = [0; N];
        self.input.read_exact(&mut b).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                bad("the stream ended in the middle of a record".into())
            } else {
                e
            }
        })?;
        Ok(b)
    }

    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.read::<1>()?[0])
    }

    fn be32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.read()?))
    }

    fn be64(&mut self) -> io::Result<u64> {
        Ok(u64::from_be_bytes(self.read()?))
    }

    fn bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0; n];
        self.input.read_exact(&mut v)?;
        Ok(v)
    }

    /// A one-byte length and that many bytes (an id string).
    fn idstr(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u8()?;
        self.bytes(n.into())
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        Ok(self.input.fill_buf()?.first().copied())
    }

    fn run(&mut self) -> io::Result<()> {
        let magic = self.be32()?;
        let version = self.be32()?;
        if magic != MAGIC || version != VERSION {
            return Err(bad(format!(
                "not a QEMU migration stream of version {VERSION} (magic {magic:#x}, version {version})"
            )));
        }
        self.state.put(&magic.to_be_bytes())?;
        self.state.put(&version.to_be_bytes())?;
        loop {
            let Some(kind) = self.peek()? else {
                return Err(bad("the stream ended before its end marker".into()));
            };
            match kind {
                CONFIGURATION => self.configuration()?,
                SECTION_START => {
                    self.input.consume(1);
                    let id = self.be32()?;
                    let name = self.idstr()?;
                    let instance = self.be32()?;
                    let version = self.be32()?;
                    if name != b"ram" {
                        return Err(bad(format!(
                            "an iterable section {:?} besides RAM, which snapshots do not handle",
                            String::from_utf8_lossy(&name)
                        )));
                    }
                    self.ram_section = Some(id);
                    self.state.put(&[SECTION_START])?;
                    self.state.put(&id.to_be_bytes())?;
                    self.state.put(&[name.len() as u8])?;
                    self.state.put(&name)?;
                    self.state.put(&instance.to_be_bytes())?;
                    self.state.put(&version.to_be_bytes())?;
                    self.ram_records()?;
                    self.footer(id)?;
                }
                SECTION_PART | SECTION_END => {
                    self.input.consume(1);
                    let id = self.be32()?;
                    if Some(id) != self.ram_section {
                        return Err(bad(format!("a part of section {id}, which is not RAM's")));
                    }
                    self.state.put(&[kind])?;
                    self.state.put(&id.to_be_bytes())?;
                    self.ram_records()?;
                    self.footer(id)?;
                }
                _ => {
                    // The devices' sections, the end marker and the JSON
                    // description: the rest of the stream, as it is.
                    if kind == VM_EOF || self.ram_section.is_some() {
                        return self.copy_rest();
                    }
                    return Err(bad(format!(
                        "section kind {kind:#x} before any RAM section"
                    )));
                }
            }
        }
    }

    fn copy_rest(&mut self) -> io::Result<()> {
        loop {
            let buf = self.input.fill_buf()?;
            if buf.is_empty() {
                return Ok(());
            }
            let n = buf.len();
            self.state.bytes += n as u64;
            self.state.inner.write_all(buf)?;
            self.input.consume(n);
        }
    }

    /// The configuration: the machine type's name and the subsections QEMU
    /// 7 and later may send (target page bits, capabilities, UUID).
    fn configuration(&mut self) -> io::Result<()> {
        self.input.consume(1);
        self.state.put(&[CONFIGURATION])?;
        let len = self.be32()?;
        if len > 256 {
            return Err(bad(format!("a machine type name of {len} bytes")));
        }
        let name = self.bytes(len as usize)?;
        self.state.put(&len.to_be_bytes())?;
        self.state.put(&name)?;
        while self.peek()? == Some(SUBSECTION) {
            self.input.consume(1);
            let sub = self.idstr()?;
            let version = self.be32()?;
            self.state.put(&[SUBSECTION, sub.len() as u8])?;
            self.state.put(&sub)?;
            self.state.put(&version.to_be_bytes())?;
            match sub.as_slice() {
                b"configuration/target-page-bits" => {
                    let bits = self.read::<4>()?;
                    self.state.put(&bits)?;
                }
                b"configuration/capabilities" => {
                    let count = self.be32()?;
                    if count > 64 {
                        return Err(bad(format!("{count} capabilities in the configuration")));
                    }
                    self.state.put(&count.to_be_bytes())?;
                    for _ in 0..count {
                        let cap = self.idstr()?;
                        self.state.put(&[cap.len() as u8])?;
                        self.state.put(&cap)?;
                    }
                }
                b"configuration/uuid" => {
                    let uuid = self.read::<16>()?;
                    self.state.put(&uuid)?;
                }
                other => {
                    return Err(bad(format!(
                        "a configuration subsection {:?} this reader does not know",
                        String::from_utf8_lossy(other)
                    )))
                }
            }
        }
        Ok(())
    }

    fn footer(&mut self, id: u32) -> io::Result<()> {
        if self.peek()? == Some(SECTION_FOOTER) {
            self.input.consume(1);
            let got = self.be32()?;
            if got != id {
                return Err(bad(format!("section {id} ends with the footer of {got}")));
            }
            self.state.put(&[SECTION_FOOTER])?;
            self.state.put(&id.to_be_bytes())?;
        }
        Ok(())
    }

    /// The records of one RAM section, through its end-of-section flag.
    fn ram_records(&mut self) -> io::Result<()> {
        loop {
            let word = self.be64()?;
            let offset = word & !(PAGE_SIZE - 1);
            let flags = word & (PAGE_SIZE - 1);
            if flags & (FLAG_XBZRLE | FLAG_COMPRESS | FLAG_HOOK) != 0 {
                return Err(bad(format!(
                    "a RAM record with flags {flags:#x} (compressed, XBZRLE or RDMA), which snapshots do not enable"
                )));
            }
            if flags & (FLAG_ZERO | FLAG_PAGE) != 0 {
                if flags & FLAG_CONTINUE == 0 {
                    self.current = Some(self.idstr()?);
                }
                let Some(current) = self.current.clone() else {
                    return Err(bad("a page record continues no block".into()));
                };
                let ours = current == self.block;
                match flags & !FLAG_CONTINUE {
                    FLAG_ZERO => {
                        let fill = self.u8()?;
                        if ours {
                            if self.ram.zero(offset, fill)? {
                                self.split.zero_pages += 1;
                            } else {
                                self.split.pages += 1;
                            }
                        } else {
                            self.put_record(offset | FLAG_ZERO, &current, &[fill])?;
                        }
                    }
                    FLAG_PAGE => {
                        let data = self.read::<{ PAGE_SIZE as usize }>()?;
                        if ours {
                            self.ram.page(offset, &data)?;
                            self.split.pages += 1;
                        } else {
                            self.put_record(offset | FLAG_PAGE, &current, &data)?;
                        }
                    }
                    other => {
                        return Err(bad(format!("a RAM record with flags {other:#x}")));
                    }
                }
                continue;
            }
            match flags {
                FLAG_MEM_SIZE => {
                    self.state.put(&word.to_be_bytes())?;
                    self.block_list(offset)?;
                }
                FLAG_EOS => {
                    self.state.put(&word.to_be_bytes())?;
                    return Ok(());
                }
                other => return Err(bad(format!("a RAM record with flags {other:#x}"))),
            }
        }
    }

    /// A page record of a block other than the split one, with its block
    /// named (records dropped before it may have been the ones it
    /// continued).
    fn put_record(&mut self, word: u64, block: &[u8], data: &[u8]) -> io::Result<()> {
        self.state.put(&word.to_be_bytes())?;
        self.state.put(&[block.len() as u8])?;
        self.state.put(block)?;
        self.state.put(data)
    }

    /// The block list after `MEM_SIZE`: id, length and (with
    /// `x-ignore-shared`) guest address of each block, until the lengths
    /// add up to the total.
    fn block_list(&mut self, total: u64) -> io::Result<()> {
        let mut left = total;
        while left > 0 {
            let id = self.idstr()?;
            let len = self.be64()?;
            let addr = self.be64()?;
            self.state.put(&[id.len() as u8])?;
            self.state.put(&id)?;
            self.state.put(&len.to_be_bytes())?;
            self.state.put(&addr.to_be_bytes())?;
            if id == self.block {
                self.ram.size(len)?;
                self.split.block_bytes = len;
            }
            left = left
                .checked_sub(len)
                .ok_or_else(|| bad("RAM blocks longer than the total they add to".into()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream as QEMU 7.2 writes it for a stopped VM with `x-ignore-shared`
    /// on: blocks `ram` (4 pages) and `rom` (1 page).
    fn stream(ram_pages: &[(u64, Option<u8>)]) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(MAGIC.to_be_bytes());
        s.extend(VERSION.to_be_bytes());
        s.push(CONFIGURATION);
        s.extend(7u32.to_be_bytes());
        s.extend(b"microvm");
        s.push(SUBSECTION);
        let sub = b"configuration/capabilities";
        s.push(sub.len() as u8);
        s.extend(sub);
        s.extend(1u32.to_be_bytes());
        s.extend(1u32.to_be_bytes());
        s.push(15);
        s.extend(b"x-ignore-shared");
        // Section start: ram, with its block list.
        s.push(SECTION_START);
        s.extend(2u32.to_be_bytes());
        s.push(3);
        s.extend(b"ram");
        s.extend(0u32.to_be_bytes());
        s.extend(4u32.to_be_bytes());
        s.extend(((6 * PAGE_SIZE) | FLAG_MEM_SIZE).to_be_bytes());
        for (id, pages, addr) in [(&b"ram"[..], 4u64, 0u64), (b"rom", 2, 0xfeff_0000)] {
            s.push(id.len() as u8);
            s.extend(id);
            s.extend((pages * PAGE_SIZE).to_be_bytes());
            s.extend(addr.to_be_bytes());
        }
        s.extend(FLAG_EOS.to_be_bytes());
        s.push(SECTION_FOOTER);
        s.extend(2u32.to_be_bytes());
        // Section end: the pages.
        s.push(SECTION_END);
        s.extend(2u32.to_be_bytes());
        let mut first = true;
        for &(page, content) in ram_pages {
            let flag = if content.is_some() {
                FLAG_PAGE
            } else {
                FLAG_ZERO
            };
            let cont = if first { 0 } else { FLAG_CONTINUE };
            s.extend(((page * PAGE_SIZE) | flag | cont).to_be_bytes());
            if first {
                s.push(3);
                s.extend(b"ram");
                first = false;
            }
            match content {
                Some(b) => s.extend([b; PAGE_SIZE as usize]),
                None => s.push(0),
            }
        }
        // The ROM's pages, the second continuing the first: both must
        // come out named, as the records before them are dropped.
        s.extend(FLAG_PAGE.to_be_bytes());
        s.push(3);
        s.extend(b"rom");
        s.extend([0xaa; PAGE_SIZE as usize]);
        s.extend((PAGE_SIZE | FLAG_PAGE | FLAG_CONTINUE).to_be_bytes());
        s.extend([0xbb; PAGE_SIZE as usize]);
        // A ram page continuing after the ROM's is not the ROM's.
        s.extend(((2 * PAGE_SIZE) | FLAG_PAGE).to_be_bytes());
        s.push(3);
        s.extend(b"ram");
        s.extend([2; PAGE_SIZE as usize]);
        s.extend(FLAG_EOS.to_be_bytes());
        s.push(SECTION_FOOTER);
        s.extend(2u32.to_be_bytes());
        // A device section and the end.
        s.push(0x04);
        s.extend(b"device bytes, copied as they are");
        s.push(VM_EOF);
        s
    }

    fn ram_file(dir: &std::path::Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("ram"))
            .unwrap()
    }

    #[test]
    fn pages_of_the_block_go_to_the_file_and_the_rest_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let ram = ram_file(tmp.path());
        let input = stream(&[(0, Some(1)), (1, None), (3, Some(3))]);
        let mut state = Vec::new();
        let got = split(&input[..], &mut state, &ram, "ram").unwrap();
        assert_eq!(
            got,
            Split {
                state_bytes: state.len() as u64,
                pages: 3,
                zero_pages: 1,
                block_bytes: 4 * PAGE_SIZE,
            }
        );
        let mem = std::fs::read(tmp.path().join("ram")).unwrap();
        assert_eq!(mem.len() as u64, 4 * PAGE_SIZE);
        assert!(mem[..4096].iter().all(|&b| b == 1));
        assert!(mem[4096..2 * 4096].iter().all(|&b| b == 0));
        assert!(mem[2 * 4096..3 * 4096].iter().all(|&b| b == 2));
        assert!(mem[3 * 4096..].iter().all(|&b| b == 3));
        // What is left is the same stream without the block's pages: the
        // ROM page is there (named), the device bytes follow unchanged.
        assert!(state.len() < 3 * 4096);
        assert!(state
            .windows(b"device bytes".len())
            .any(|w| w == b"device bytes"));
        assert_eq!(state.iter().filter(|&&b| b == 0xaa).count(), 4096);
        assert_eq!(state.iter().filter(|&&b| b == 0xbb).count(), 4096);
        assert_eq!(state.windows(4).filter(|w| w == b"\x03rom").count(), 3);
        assert_eq!(&state[..8], &input[..8]);
    }

    #[test]
    fn a_zero_page_over_a_written_page_writes_zeros() {
        let tmp = tempfile::tempdir().unwrap();
        let ram = ram_file(tmp.path());
        let got = split(
            &stream(&[(1, Some(9)), (1, None)])[..],
            io::sink(),
            &ram,
            "ram",
        )
        .unwrap();
        assert_eq!((got.pages, got.zero_pages), (3, 0));
        let mem = std::fs::read(tmp.path().join("ram")).unwrap();
        assert!(mem[4096..2 * 4096].iter().all(|&b| b == 0));
    }

    #[test]
    fn broken_streams_are_refused_with_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let ram = File::create(tmp.path().join("ram")).unwrap();
        let good = stream(&[(0, Some(1))]);
        let err = |input: &[u8], block: &str| {
            split(input, io::sink(), &ram, block)
                .unwrap_err()
                .to_string()
        };
        assert!(err(b"not a stream", "ram").contains("not a QEMU migration stream"));
        assert!(err(&good[..good.len() / 2], "ram").contains("ended"));
        assert!(err(&good, "pc.ram").contains("no block named"));
        // A page past the block's end.
        let past = stream(&[(9, Some(1))]);
        assert!(err(&past, "ram").contains("past the RAM block's end"));
        // A compressed page.
        let mut compressed = good.clone();
        let at = compressed
            .windows(8)
            .position(|w| w == (FLAG_PAGE).to_be_bytes())
            .unwrap();
        compressed[at..at + 8].copy_from_slice(&(FLAG_PAGE | FLAG_COMPRESS).to_be_bytes());
        assert!(err(&compressed, "ram").contains("compressed"));
    }
}
