//! Builds image archives for tests, well-formed or deliberately hostile: raw tar headers let a
//! test write any name, link target, type, owner and size.

use std::io::Write;

/// One entry to write.
#[derive(Debug, Clone)]
pub enum E {
    /// A regular file with contents and mode.
    File(&'static str, Vec<u8>, u32),
    /// A directory.
    Dir(&'static str),
    /// A symlink (name, target).
    Symlink(&'static str, &'static str),
    /// A hardlink (name, target).
    Hardlink(&'static str, &'static str),
    /// A character device (name, major, minor).
    Char(&'static str, u32, u32),
    /// A file owned by (uid, gid).
    Owned(&'static str, u64, u64),
    /// A header that declares `size` bytes but carries none (the archive ends).
    Declares(&'static str, u64),
}

/// A valid metadata.yaml.
pub fn metadata() -> E {
    E::File(
        "metadata.yaml",
        b"architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: test\n"
            .to_vec(),
        0o644,
    )
}

fn raw_header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().expect("gnu header");
        let n = name.as_bytes();
        assert!(n.len() < 100, "test names are short");
        g.name[..n.len()].copy_from_slice(n);
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn link(h: &mut tar::Header, target: &str) {
    let g = h.as_gnu_mut().expect("gnu header");
    let t = target.as_bytes();
    g.linkname[..t.len()].copy_from_slice(t);
}

/// An uncompressed tarball of `entries` (names written exactly as given).
pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (mut h, data): (tar::Header, Vec<u8>) = match e {
            E::File(n, d, m) => (
                raw_header(n, tar::EntryType::Regular, d.len() as u64, *m),
                d.clone(),
            ),
            E::Dir(n) => (raw_header(n, tar::EntryType::Directory, 0, 0o755), vec![]),
            E::Symlink(n, t) => {
                let mut h = raw_header(n, tar::EntryType::Symlink, 0, 0o777);
                link(&mut h, t);
                (h, vec![])
            }
            E::Hardlink(n, t) => {
                let mut h = raw_header(n, tar::EntryType::Link, 0, 0o644);
                link(&mut h, t);
                (h, vec![])
            }
            E::Char(n, maj, min) => {
                let mut h = raw_header(n, tar::EntryType::Char, 0, 0o600);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                (h, vec![])
            }
            E::Owned(n, u, g) => {
                let mut h = raw_header(n, tar::EntryType::Regular, 1, 0o644);
                h.set_uid(*u);
                h.set_gid(*g);
                (h, b"x".to_vec())
            }
            E::Declares(n, size) => {
                let mut h = raw_header(n, tar::EntryType::Regular, *size, 0o644);
                h.set_cksum();
                out.extend_from_slice(h.as_bytes());
                return out; // the archive stops here
            }
        };
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// xz of `data`.
pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A zstd-compressed tarball holding metadata.yaml and one file of `size` zero bytes: a
/// few KiB that unpack to `size`.
pub fn zstd_bomb(size: u64) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let head = tar(&[metadata(), E::Dir("rootfs")]);
    enc.write_all(&head[..head.len() - 1024]).unwrap();
    let mut h = raw_header("rootfs/zeros", tar::EntryType::Regular, size, 0o644);
    h.set_cksum();
    enc.write_all(h.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        enc.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    enc.write_all(&vec![0u8; ((512 - size % 512) % 512) as usize + 1024])
        .unwrap();
    enc.finish().unwrap()
}

/// Writes to `path` a unified tarball holding metadata.yaml and one file `rootfs/noise` of
/// `size` random bytes: an import long enough to watch, race or cancel.
pub fn write_noise_image(path: &std::path::Path, size: u64) {
    use std::io::Read;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let head = tar(&[metadata(), E::Dir("rootfs")]);
    out.write_all(&head[..head.len() - 1024]).unwrap();
    let mut h = raw_header("rootfs/noise", tar::EntryType::Regular, size, 0o644);
    h.set_cksum();
    out.write_all(h.as_bytes()).unwrap();
    let mut rnd = std::fs::File::open("/dev/urandom").unwrap().take(size);
    std::io::copy(&mut rnd, &mut out).unwrap();
    out.write_all(&vec![0u8; ((512 - size % 512) % 512) as usize + 1024])
        .unwrap();
    out.flush().unwrap();
}

/// sha256 of `data`, hex.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
