//! Plumbing shared by the CPU kernels: typed views of candle storage, the batch split for rayon,
//! a bounds-checked `gemm` wrapper and runtime SIMD dispatch.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, Layout, Result, Shape, Tensor};
use gemm::Parallelism;

/// The f32 elements of a contiguous tensor. The facade makes every argument contiguous, so a
/// strided layout here is a caller bug rather than something to support.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: expects a contiguous input, got strides {:?}", l.stride()),
    }
}

/// How `n` independent items (images) are spread over the rayon pool: chunks of `chunk` items run
/// in parallel, and `gemm` itself only parallelises when there is a single chunk (batch 1), so the
/// two levels never oversubscribe the cores.
pub(crate) fn split(n: usize) -> (usize, Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    let chunks = threads.min(n).max(1);
    let chunk = n.div_ceil(chunks).max(1);
    let par = if chunks == 1 && threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    (chunk, par)
}

/// A row-major-or-strided matrix operand: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

fn check(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) {
    if rows > 0 && cols > 0 {
        assert!((rows - 1) * rs + (cols - 1) * cs < len, "gemm operand out of bounds");
    }
}

/// `dst (m x n, row stride dst_rs) = [dst +] lhs (m x k) * rhs (k x n)` through the `gemm` crate,
/// which picks its AVX2/AVX-512 micro-kernels at run time.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    par: Parallelism,
) {
    check(dst.len(), m, n, dst_rs, 1);
    check(lhs.data.len(), m, k, lhs.rs, lhs.cs);
    check(rhs.data.len(), k, n, rhs.rs, rhs.cs);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every element gemm touches was bounds-checked above; dst does not alias the inputs
    // (it is a distinct `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Defines `fn $name(args)` that runs its body compiled for AVX-512 or AVX2+FMA when the CPU has
/// them. The workspace builds for baseline x86-64, so without this the plain loops of the
/// depthwise, pooling and resize kernels would only ever use SSE2.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident $(<$($lt:lifetime),+>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$($lt),+>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body $(<$($lt),+>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512 $(<$($lt),+>)? ($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2 $(<$($lt),+>)? ($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// A zero-filled buffer whose pages are first touched by writes spread over the rayon pool.
/// `vec![0.0; n]` maps copy-on-write zero pages; a kernel that accumulates (`+=`) into them then
/// takes a second fault per page, each flushing every core's TLB: measured 15x slower max-pool
/// backward. Buffers that are only ever written (GEMM outputs) can keep `vec!`.
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut().par_chunks_mut(1 << 16).for_each(|c| {
        for x in c {
            x.write(0.0);
        }
    });
    // SAFETY: all `n` elements were initialised above.
    unsafe { v.set_len(n) };
    v
}

/// A chunk of a new buffer, not written yet. The only ways to get at its elements are the
/// methods that write every one of them ([`Blank::fill`], [`Blank::map`], ...).
pub(crate) struct Blank<'a>(&'a mut [MaybeUninit<f32>]);

/// A [`Blank`] chunk after [`Blank::fill`]: every element written.
pub(crate) struct Filled<'a>(&'a mut [f32]);

impl<'a> Blank<'a> {
    /// Writes `value` everywhere.
    pub fn fill(self, value: f32) -> Filled<'a> {
        let len = self.0.len();
        self.fill_rows(len, |_| value)
    }

    /// Writes `value(r)` across each row `r` of `row_len` elements.
    pub fn fill_rows(self, row_len: usize, value: impl Fn(usize) -> f32) -> Filled<'a> {
        for (r, row) in self.0.chunks_mut(row_len.max(1)).enumerate() {
            let v = value(r);
            for x in row {
                x.write(v);
            }
        }
        // SAFETY: the rows cover the chunk and every element was written just above.
        unsafe { self.filled() }
    }

    /// Writes row `r` (of `row_len` elements) as `src + add` where `(src, add) = row(r)`, `src`
    /// at least a row long.
    pub fn rows_from<'s>(self, row_len: usize, row: impl Fn(usize) -> (&'s [f32], f32)) -> Filled<'a> {
        for (r, out) in self.0.chunks_mut(row_len.max(1)).enumerate() {
            let (src, add) = row(r);
            let src = &src[..out.len()];
            for (o, &v) in out.iter_mut().zip(src) {
                o.write(v + add);
            }
        }
        // SAFETY: the rows cover the chunk and every element was written just above.
        unsafe { self.filled() }
    }

    /// Writes `f([src_0[i], src_1[i], ..])` at every position `i`: an element-wise map over
    /// sources at least as long as the chunk, written so that it inlines and vectorises (no
    /// index closure called per element).
    #[inline(always)]
    pub fn map<const N: usize>(self, src: [&[f32]; N], f: impl Fn([f32; N]) -> f32) -> Filled<'a> {
        let len = self.0.len();
        let src = src.map(|s| &s[..len]);
        for (i, v) in self.0.iter_mut().enumerate() {
            v.write(f(src.map(|s| s[i])));
        }
        // SAFETY: every element was written just above.
        unsafe { self.filled() }
    }

    /// The chunk as initialised floats.
    ///
    /// # Safety
    /// Every element must have been written.
    unsafe fn filled(self) -> Filled<'a> {
        // SAFETY: the caller wrote every element; MaybeUninit<f32> has f32's layout.
        Filled(unsafe { &mut *(self.0 as *mut [MaybeUninit<f32>] as *mut [f32]) })
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::ops::Deref for Filled<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.0
    }
}

impl std::ops::DerefMut for Filled<'_> {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.0
    }
}

/// A new buffer of `n` floats built in parallel chunks of `chunk` elements: `build(i, blank)`
/// fills chunk `i` (then computes on it). Unlike `vec![0.0; n]`, nothing is written twice: the
/// allocator zeroing reused memory was a serial pass over every layer's output on the calling
/// thread (~10% of a quick forward); here each chunk is first written by the thread that
/// computes it, while it is in cache.
pub(crate) fn par_build(
    n: usize,
    chunk: usize,
    build: impl for<'a> Fn(usize, Blank<'a>) -> Filled<'a> + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| {
        let (ptr, len) = (c.as_ptr() as *const f32, c.len());
        let filled = build(i, Blank(c));
        // A `Filled` can only come from `Blank::fill`: this one must be chunk `i`'s.
        assert!(std::ptr::eq(filled.0.as_ptr(), ptr) && filled.0.len() == len, "par_build: chunk {i} not filled");
    });
    // SAFETY: every chunk was filled (asserted above); a panic leaves the length at 0.
    unsafe { v.set_len(n) };
    v
}

/// Elements per rayon task of an element-wise map: big enough to amortise scheduling, small
/// enough to split a layer.
const MAP_CHUNK: usize = 1 << 15;

/// `f(a_i)` for every element, in parallel chunks.
pub(crate) fn map1(a: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    par_build(a.len(), MAP_CHUNK, |i, blank| blank.map([&a[i * MAP_CHUNK..]], |[a]| f(a)))
}

/// `f(a_i, b_i)` for every element, in parallel chunks.
pub(crate) fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    par_build(a.len(), MAP_CHUNK, |i, blank| {
        let (a, b) = (&a[i * MAP_CHUNK..], &b[i * MAP_CHUNK..]);
        blank.map([a, b], |[a, b]| f(a, b))
    })
}

/// An error unless the two operands of an element-wise op have the same shape.
pub(crate) fn same_shape(op: &str, a: &Layout, b: &Layout) -> Result<()> {
    if a.dims() != b.dims() {
        bail!("{op}: shapes {:?} and {:?} differ", a.dims(), b.dims())
    }
    Ok(())
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer of `n` floats, kept between calls so that patch
/// matrices and GEMM staging buffers are not allocated and zeroed for every task. Its contents
/// are whatever the last user left: `f` must write before it reads. A nested call (a thread that
/// steals another task while inside `f`) gets a fresh buffer.
pub(crate) fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < n {
                v.resize(n, 0.0);
            }
            f(&mut v[..n])
        }
        Err(_) => f(&mut vec![0f32; n]),
    })
}

/// Splits a backward op's flat output (custom ops return one tensor) into consecutive pieces of
/// the given shapes.
pub(crate) fn split_flat<const N: usize>(all: &Tensor, shapes: [&Shape; N]) -> Result<[Tensor; N]> {
    let mut offset = 0;
    let mut parts = Vec::with_capacity(N);
    for shape in shapes {
        let n = shape.elem_count();
        parts.push(all.narrow(0, offset, n)?.reshape(shape)?);
        offset += n;
    }
    match parts.try_into() {
        Ok(parts) => Ok(parts),
        Err(_) => unreachable!("one part per shape"),
    }
}
