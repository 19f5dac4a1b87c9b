//! Batched forward passes that survive a full GPU: Score-CAM and Ablation-CAM push `B x K`
//! perturbed inputs through the network `chunk` at a time; when the device runs out of memory,
//! the chunk is halved (and the user told) instead of failing a run that may be hours old.

use candle_core::Result;

/// Whether `e` is the device saying it has no memory left (CUDA's `CUDA_ERROR_OUT_OF_MEMORY`,
/// cuBLAS's and cuDNN's allocation failures).
pub fn is_out_of_memory(e: &candle_core::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    ["out_of_memory", "out of memory", "alloc_failed"].iter().any(|m| text.contains(m))
}

/// Calls `f` on consecutive slices of `items`, at most `chunk` long, in order; a slice that fails
/// for lack of device memory is retried in halves, down to one item, with a warning naming `what`.
/// Any other error is returned.
pub fn for_each_chunk<T>(items: &[T], chunk: usize, what: &str, mut f: impl FnMut(&[T]) -> Result<()>) -> Result<()> {
    let mut chunk = chunk.max(1);
    let mut start = 0;
    while start < items.len() {
        let part = &items[start..(start + chunk).min(items.len())];
        match f(part) {
            Ok(()) => start += part.len(),
            Err(e) if chunk > 1 && is_out_of_memory(&e) => {
                let smaller = chunk / 2;
                eprintln!(
                    "warning: {what}: out of device memory with {chunk} inputs per forward pass; continuing with {smaller} \
                     (set a smaller `chunk` to skip this retry)"
                );
                chunk = smaller;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_of_memory_chunk_is_halved_and_every_item_is_seen_once_in_order() {
        let items: Vec<usize> = (0..11).collect();
        let (mut seen, mut sizes) = (Vec::new(), Vec::new());
        for_each_chunk(&items, 8, "test", |part| {
            if part.len() > 3 {
                return Err(candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into()));
            }
            sizes.push(part.len());
            seen.extend_from_slice(part);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, items);
        assert_eq!(sizes, vec![2, 2, 2, 2, 2, 1], "8 -> 4 -> 2 per pass");
    }

    #[test]
    fn other_errors_and_a_single_item_out_of_memory_are_returned() {
        let items = [1, 2, 3];
        let err = for_each_chunk(&items, 2, "test", |_| Err(candle_core::Error::Msg("shape mismatch".into())));
        assert!(err.unwrap_err().to_string().contains("shape mismatch"));
        let err = for_each_chunk(&items, 4, "test", |_| Err(candle_core::Error::Msg("out of memory".into())));
        assert!(is_out_of_memory(&err.unwrap_err()));
    }
}
