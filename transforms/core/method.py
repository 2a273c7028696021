"""How documents become windows and predictions become spans: one object, given to every
stage and setting that it changes (segmentation, decoding, inference, the windows check)."""

from __future__ import annotations

from dataclasses import dataclass

from transforms.core.windows import REFERENCE_WINDOW


@dataclass(frozen=True, kw_only=True)
class Method:
    """The pipeline's way (training-regex words, sentences packed into windows of
    ``max_tokens`` sub-words with ``overlap``, each word read once from its first sub-word),
    or with ``reference_compat`` the DT4H reference scripts' (raw text, 512-sub-word windows
    with stride 128, every window votes; torch fp32 unless asked otherwise, padded to 512)."""

    reference_compat: bool = False
    max_tokens: int = 512
    overlap: int = 128

    @property
    def window(self) -> int:
        """The longest window, in sub-words (what a model's positions must hold)."""
        return REFERENCE_WINDOW if self.reference_compat else self.max_tokens

    @property
    def pad_to(self) -> int | None:
        """The length every window is padded to (None: the batch's longest)."""
        return REFERENCE_WINDOW if self.reference_compat else None

    def precision(self, asked: str) -> str:
        return "fp32" if self.reference_compat and asked == "auto" else asked

    def backend(self, asked: str) -> str:
        return "torch" if self.reference_compat and asked == "auto" else asked

    def batch_tokens(self, asked: int) -> int:
        return max(asked, REFERENCE_WINDOW) if self.reference_compat else asked
