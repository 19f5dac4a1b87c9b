//! Interpretability metrics: AD/AG/AI, insertion/deletion, localisation (METHOD.md §5).
//! Not implemented yet: the experiments that need it report `not yet available`.
