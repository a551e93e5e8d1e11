"""Watching the champion at work from the prediction log: ``python -m pipeline.monitor``
(the math: :mod:`pipeline.core.monitoring`; the report: :mod:`.report`)."""
