"""LeNet-5 on MNIST: one module per DVC stage plus the shared pieces."""

import os

# Before TensorFlow is first imported: keep its C++ start-up chatter out of stage logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
