//! The CA-Stream: cross-attention pooling blocks beside a frozen backbone (METHOD.md §2).
//! Not implemented yet: the experiments that need it report `not yet available`.
