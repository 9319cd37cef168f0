//! What an image file is, told from its first bytes rather than its name: the compression
//! (gzip, xz, zstd, bzip2 or none) and, once decompressed, tar or squashfs.

use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Read};

/// A compression format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    None,
    /// gzip.
    Gzip,
    /// xz.
    Xz,
    /// zstd.
    Zstd,
    /// bzip2.
    Bzip2,
}

/// What a (possibly compressed) image file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// A tarball (possibly compressed).
    Tar(Compression),
    /// A squashfs filesystem (split images' rootfs).
    Squashfs,
}

impl Compression {
    /// Recognizes a compressed stream by its magic bytes.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
            Compression::Bzip2
        } else {
            Compression::None
        }
    }

    /// The tarball file extension Incus uses for this compression.
    pub fn tar_extension(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "tar.gz",
            Compression::Xz => "tar.xz",
            Compression::Zstd => "tar.zst",
            Compression::Bzip2 => "tar.bz2",
        }
    }
}

impl Payload {
    /// Recognizes the payload of a file from its first bytes. A stream that is neither a known
    /// compression, squashfs nor a tar header is refused.
    pub fn sniff(head: &[u8]) -> Result<Payload> {
        if head.starts_with(b"hsqs") {
            return Ok(Payload::Squashfs);
        }
        match Compression::sniff(head) {
            Compression::None if is_tar_header(head) => Ok(Payload::Tar(Compression::None)),
            Compression::None => Err(Error::InvalidImage(
                "the file is neither a tarball (plain, gzip, xz, zstd or bzip2) nor a squashfs image".into(),
            )),
            c => Ok(Payload::Tar(c)),
        }
    }

    /// The file name extension Incus gives such a file.
    pub fn extension(self) -> &'static str {
        match self {
            Payload::Tar(c) => c.tar_extension(),
            Payload::Squashfs => "squashfs",
        }
    }
}

/// A ustar/GNU header: "ustar" magic at offset 257, or a valid header checksum.
fn is_tar_header(b: &[u8]) -> bool {
    if b.len() < 512 {
        return false;
    }
    if &b[257..262] == b"ustar" {
        return true;
    }
    // v7 tar: check the header checksum
    let stored = std::str::from_utf8(&b[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '));
    let Some(Ok(stored)) = stored.map(|s| u32::from_str_radix(s, 8)) else {
        return false;
    };
    let sum: u32 = b[..512]
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if (148..156).contains(&i) {
                32
            } else {
                x as u32
            }
        })
        .sum();
    sum == stored && b[0] != 0
}

/// The first bytes of `r` (up to its buffer), without consuming them.
pub fn peek<R: Read>(r: &mut BufReader<R>) -> Result<Vec<u8>> {
    let buf = r
        .fill_buf()
        .map_err(|e| Error::InvalidImage(format!("unreadable image: {e}")))?;
    Ok(buf[..buf.len().min(1024)].to_vec())
}

/// A decompressing reader for `c`.
pub fn decoder<'a, R: Read + 'a>(c: Compression, r: R) -> Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(r)
                .map_err(|e| Error::InvalidImage(format!("zstd stream: {e}")))?,
        ),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "a", &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn sniffs_every_format_and_round_trips() {
        let plain = tar_bytes();
        assert_eq!(
            Payload::sniff(&plain).unwrap(),
            Payload::Tar(Compression::None)
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&plain).unwrap();
            e.finish().unwrap()
        };
        let zs = zstd::encode_all(&plain[..], 1).unwrap();
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&plain).unwrap();
            e.finish().unwrap()
        };
        for (data, c) in [
            (gz, Compression::Gzip),
            (xz, Compression::Xz),
            (zs, Compression::Zstd),
            (bz, Compression::Bzip2),
        ] {
            assert_eq!(Payload::sniff(&data).unwrap(), Payload::Tar(c));
            let mut out = Vec::new();
            decoder(c, &data[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, plain, "{c:?}");
        }
        assert_eq!(Payload::sniff(b"hsqs\0\0\0\0").unwrap(), Payload::Squashfs);
        assert!(Payload::sniff(b"PK\x03\x04 zip file").is_err());
        assert!(Payload::sniff(&[0u8; 1024]).is_err());
    }

    #[test]
    fn truncated_streams_fail() {
        let plain = tar_bytes();
        let zs = zstd::encode_all(&plain[..], 1).unwrap();
        let mut out = Vec::new();
        assert!(
            decoder(Compression::Zstd, &zs[..zs.len() / 2])
                .unwrap()
                .read_to_end(&mut out)
                .is_err()
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let mut out = Vec::new();
        assert!(
            decoder(Compression::Gzip, &gz[..gz.len() - 6])
                .unwrap()
                .read_to_end(&mut out)
                .is_err()
        );
    }
}
