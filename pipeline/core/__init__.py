"""The shared core the stages and commands are built from.

Nothing here is run on its own: ``params`` (typed params.yaml), ``layout`` (every data
path), ``data`` (IDX decoding, split files, atomic writes), ``model`` (LeNet-5),
``loop`` and ``training`` (the training loop and recipe), ``hardware`` (what the CPU
can do), ``metrics`` and ``plots``, ``imaging`` (any image to MNIST's form),
``tracking`` (the only module that calls MLflow), ``errors`` and ``cli`` (one-line
errors, exit codes).
"""
