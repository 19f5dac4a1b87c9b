//! CAM methods: Grad-CAM, Grad-CAM++, Score-CAM, raw attention and more (METHOD.md §4).
//! Not implemented yet: the experiments that need it report `not yet available`.
