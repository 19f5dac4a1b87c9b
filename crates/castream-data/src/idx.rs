//! Reader for the IDX format of MNIST and Fashion-MNIST, plain or gzip-compressed.
//!
//! Layout: a 4-byte magic `0x00 0x00 TYPE NDIM`, then NDIM big-endian u32 dimensions, then the
//! elements. Only unsigned bytes (TYPE 0x08) occur in these datasets.

use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const TYPE_U8: u8 = 0x08;

/// An n-dimensional array of bytes read from an IDX file.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file, decompressing it first when it starts with the gzip magic.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out).map_err(|e| DataError::io(path, e))?;
        out
    } else {
        raw
    };
    parse_idx(bytes, path)
}

/// Parses the bytes of an (uncompressed) IDX file; `path` is only used in error messages.
pub fn parse_idx(mut bytes: Vec<u8>, path: &Path) -> Result<IdxArray> {
    let truncated = |expected: usize, found: usize| DataError::Truncated { path: path.to_path_buf(), expected, found };
    if bytes.len() < 4 {
        return Err(truncated(4, bytes.len()));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let (type_code, ndim) = (bytes[2], bytes[3] as usize);
    if bytes[0] != 0 || bytes[1] != 0 || ndim == 0 {
        return Err(DataError::BadMagic { path: path.to_path_buf(), found: magic });
    }
    if type_code != TYPE_U8 {
        return Err(DataError::UnsupportedType { path: path.to_path_buf(), code: type_code });
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(truncated(header, bytes.len()));
    }
    let dims: Vec<usize> =
        bytes[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let count = count.ok_or(DataError::BadMagic { path: path.to_path_buf(), found: magic })?;
    let found = bytes.len() - header;
    if found < count {
        return Err(truncated(count, found));
    }
    if found > count {
        return Err(DataError::TrailingBytes { path: path.to_path_buf(), expected: count, found: found - count });
    }
    bytes.drain(..header);
    Ok(IdxArray { dims, data: bytes })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Hand-builds an IDX file of unsigned bytes.
    pub(crate) fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, TYPE_U8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_plain_and_gzip_files_identically() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..24).collect();
        let bytes = idx_bytes(&[2, 3, 4], &data);
        let plain = read_idx(&write(dir.path(), "a-idx3-ubyte", &bytes)).unwrap();
        let gz = read_idx(&write(dir.path(), "a-idx3-ubyte.gz", &gzip(&bytes))).unwrap();
        assert_eq!(plain, IdxArray { dims: vec![2, 3, 4], data });
        assert_eq!(plain, gz);
    }

    #[test]
    fn wrong_magic_is_reported_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bad", b"PK\x03\x04rest-of-a-zip");
        let err = read_idx(&p).unwrap_err();
        assert!(matches!(err, DataError::BadMagic { found: 0x504b0304, .. }), "{err}");
        assert!(err.to_string().contains(&p.display().to_string()));
    }

    #[test]
    fn unsupported_element_type_is_rejected() {
        let bytes = vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0];
        let err = parse_idx(bytes, Path::new("f32.idx")).unwrap_err();
        assert!(matches!(err, DataError::UnsupportedType { code: 0x0d, .. }), "{err}");
    }

    #[test]
    fn truncated_data_and_header_are_reported_with_sizes() {
        let mut bytes = idx_bytes(&[10, 28, 28], &vec![7; 10 * 28 * 28]);
        bytes.truncate(bytes.len() - 100);
        let err = parse_idx(bytes, Path::new("t")).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected: 7840, found: 7740, .. }), "{err}");

        let header_only = idx_bytes(&[10, 28, 28], &[]);
        let err = parse_idx(header_only[..9].to_vec(), Path::new("t")).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected: 16, found: 9, .. }), "{err}");

        let err = parse_idx(vec![0, 0], Path::new("t")).unwrap_err();
        assert!(matches!(err, DataError::Truncated { .. }), "{err}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let bytes = idx_bytes(&[3], &[1, 2, 3, 4]);
        let err = parse_idx(bytes, Path::new("t")).unwrap_err();
        assert!(matches!(err, DataError::TrailingBytes { expected: 3, found: 1, .. }), "{err}");
    }

    #[test]
    fn corrupt_gzip_stream_is_an_io_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = gzip(&idx_bytes(&[4], &[1, 2, 3, 4]));
        gz.truncate(gz.len() / 2);
        let p = write(dir.path(), "half.gz", &gz);
        let err = read_idx(&p).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err}");
        assert!(err.to_string().contains("half.gz"));
    }
}
