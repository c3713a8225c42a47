"""Checks shared by the layer ops' fake implementations."""


def same_device(op, input, **others):
    """The C++ ops refuse mixed devices; the fakes must too. A meta tensor among CPU ones
    sends the call to the fake, which would otherwise answer with an uninitialised
    tensor on the input's device instead of an error."""
    for name, t in others.items():
        if t is not None and t.device != input.device:
            raise RuntimeError(f"fusedopt::{op}: {name} is on {t.device} but input is on {input.device}")
