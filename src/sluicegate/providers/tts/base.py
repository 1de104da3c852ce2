"""The interface every speech synthesizer implements.

.. code-block:: python

    synthesizer.unavailable_reason()          # None, or why it cannot speak (an extra not installed)
    await synthesizer.open()                  # load the voice now (otherwise: on first use)
    pcm = await synthesizer.synthesize("Hi")  # int16 mono PCM at synthesizer.sample_rate
    await synthesizer.close()

``synthesize`` never blocks the event loop: the voice runs in the provider's own thread,
one sentence at a time, so calls queue instead of fighting for cores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sluicegate.errors import SluicegateError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["SpeechError", "SpeechSynthesizer"]


class SpeechError(SluicegateError):
    """The voice is unavailable or failed; the message is for clients."""

    stream_code = "TTS_ERROR"


class SpeechSynthesizer(Protocol):
    """A source of speech: text in, 16-bit mono PCM out."""

    #: The voice's name (``en_US-joe-medium``).
    name: str

    @property
    def sample_rate(self) -> int:
        """Samples per second of what :meth:`synthesize` returns."""
        ...

    def unavailable_reason(self) -> str | None:
        """Why this synthesizer cannot speak (an extra not installed, a missing voice), or ``None``."""
        ...

    async def open(self) -> None:
        """Load the voice now rather than on the first :meth:`synthesize`.

        Raises:
            SpeechError: the voice cannot be loaded.
        """
        ...

    async def synthesize(self, text: str) -> npt.NDArray[np.int16]:
        """The speech of ``text``: int16 mono samples at :attr:`sample_rate` (empty for silence).

        Raises:
            SpeechError: the voice is unavailable or failed.
        """
        ...

    async def close(self) -> None:
        """Release the voice and its thread."""
        ...
