//! Saliency maps of scene batches for the figures and tables: a method's post-processed maps at
//! the input size, one row-major `side x side` vector per image.

use anyhow::Result;
use candle_core::Tensor;
use castream_cam::{explain, Method, MethodOptions, Subject};
use castream_data::labelled::hex;
use sha2::{Digest, Sha256};

/// The upsampled maps of `method` for the normalised batch `x` and one class per image.
pub fn maps(
    method: Method,
    options: &MethodOptions,
    subject: &Subject,
    x: &Tensor,
    classes: &[u32],
) -> Result<Vec<Vec<f32>>> {
    let e = explain(method.build(options).as_ref(), subject, x, classes)?;
    Ok(e.upsampled.flatten_from(1)?.to_vec2()?)
}

/// SHA-256 of the image list `<tag>/<index>` lines, recorded in `run.json`.
pub fn image_list_sha256(tag: &str, ids: &[usize]) -> String {
    let mut hasher = Sha256::new();
    ids.iter().for_each(|i| hasher.update(format!("{tag}/{i}\n")));
    hex(&hasher.finalize())
}
