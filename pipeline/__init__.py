"""LeNet-5 on MNIST: one module per DVC stage plus the shared pieces."""
