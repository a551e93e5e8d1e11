"""LeNet-5 on MNIST: one module per DVC stage plus the shared pieces."""

import os

# Before TensorFlow is first imported: keep its C++ start-up chatter out of stage logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's kernels on every x86 CPU: TensorFlow turns them on by itself only on CPUs with
# AVX512_VNNI, BF16 or AMX, and on an AVX2-only CPU its own kernels train LeNet-5 3.5x
# slower (16.5 vs 4.8 s an epoch, AMD EPYC; same results run to run either way: see
# BENCHMARKS.md). TF_ENABLE_ONEDNN_OPTS=0 in the environment still turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
