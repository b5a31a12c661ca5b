"""Language identification with py3langid (langid.py's model, shipped in its wheel).

Scores are normalised probabilities over py3langid's languages. A document is kept when
one of the wanted languages scores at least `threshold` (FineWeb keeps English at 0.65
with fastText; here the model ships in the wheel and nothing is downloaded). The top
language and its score go into `metadata["language"]` and `metadata["language_score"]`.

py3langid walks a byte-level automaton in a Python loop (~2 MB/s). The same walk runs
here as a numba kernel over the same model arrays, and the scores are then computed with
py3langid's own formula; at start-up the fast path is checked against py3langid on probe
texts and is only used when it agrees (else py3langid itself scores every document).

Reason codes of the `language` step:
    wrong_language   the best language is not in `languages` (detail: "de 0.998")
    low_score        a wanted language is best but scores under `threshold`
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from mlscale.config import option
from mlscale.curate.document import Document, Removal
from mlscale.curate.step import Filter, Item
from mlscale.errors import ConfigError


@dataclass
class LanguageConfig:
    """Which languages to keep."""

    languages: list[str] = option(["en"], "ISO 639-1 codes to keep (empty: any language)")
    threshold: float = option(0.65, "minimum probability of a kept language", min=0.0, max=1.0)


@lru_cache(maxsize=1)
def _load_identifier() -> Any:
    from py3langid import langid

    if hasattr(langid.LanguageIdentifier, "from_model_file"):  # py3langid >= 0.4
        return langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
    return langid.LanguageIdentifier.from_pickled_model(langid.MODEL_FILE, norm_probs=True)


def _walk(nextmove: np.ndarray, rowbase: np.ndarray, output: np.ndarray,
          data: np.ndarray) -> np.ndarray:
    """Feature ids met while walking py3langid's automaton over the text's bytes."""
    feats = np.empty(data.shape[0], dtype=np.int64)
    k = 0
    state = 0
    for b in data:
        state = nextmove[rowbase[state] + b]
        f = output[state]
        if f >= 0:
            feats[k] = f
            k += 1
    return feats[:k]


@lru_cache(maxsize=1)
def _walk_kernel() -> Any:
    import numba  # imported here so that importing this module stays cheap

    return numba.njit(cache=True, nogil=True)(_walk)


class LanguageIdentifier:
    """Normalised language probabilities for a text: `scores(text) -> {lang: prob}`."""

    _PROBES = ("The quick brown fox jumps over the lazy dog, and then it rests.",
               "Die Katze sitzt auf der Matte und schläft den ganzen Tag.",
               "これは日本語の文章です。言語を判定します。", "", "1234 !!!")

    def __init__(self) -> None:
        self.model = _load_identifier()
        self.labels: list[str] = list(self.model.nb_classes)
        self._fast = self._try_fast_path()

    def _try_fast_path(self) -> bool:
        m = self.model
        try:
            self._nextmove = np.frombuffer(m.tk_nextmove, dtype=np.uint32) \
                if getattr(m.tk_nextmove, "typecode", "") == "I" else np.asarray(m.tk_nextmove, dtype=np.int64)
            self._rowbase = np.asarray(m._rowbase, dtype=np.int64)
            self._output = np.asarray(m.tk_output, dtype=np.int64)
            # float16 rows are converted on every gather; one float32 copy (~57 MB) is 10x faster
            self._ptc = np.asarray(m.nb_ptc, dtype=np.float32)
            self._pc = m.nb_pc
            self._alias = list(m._alias_pairs)
            self._walk = _walk_kernel()
            for probe in self._PROBES:
                ref = m._decide(probe)
                if not np.allclose(self._fast_scores(probe), ref, atol=1e-4):
                    return False
        except (AttributeError, TypeError, ValueError, ImportError):
            return False
        return True

    def _fast_scores(self, text: str) -> np.ndarray:
        data = self.model._encode(text)
        feats = self._walk(self._nextmove, self._rowbase, self._output,
                           np.frombuffer(data, dtype=np.uint8))
        if feats.size:
            idx, counts = np.unique(feats, return_counts=True)
            scores = np.log1p(counts.astype(np.float32)) @ self._ptc[idx] + self._pc
        else:
            scores = np.zeros(len(self.labels), dtype=np.float32)
        # py3langid's calibration: softmax at temperature sqrt(bytes)
        scores = scores.astype(np.float32) * np.float32(1.0 / math.sqrt(len(data) or 1))
        np.exp(scores - scores.max(), out=scores)
        scores /= scores.sum()
        for i, j in self._alias:  # script aliases (srl -> sr) fold into one label
            scores[i] += scores[j]
            scores[j] = 0.0
        return scores

    def score_vector(self, text: str) -> np.ndarray:
        """Probabilities aligned with `self.labels` (aliased columns hold 0)."""
        if self._fast:
            return self._fast_scores(text)
        if hasattr(self.model, "_decide"):
            return np.asarray(self.model._decide(text))
        ranked = dict(self.model.rank(text))
        return np.array([ranked.get(lab, 0.0) for lab in self.labels], dtype=np.float32)

    def classify(self, text: str) -> tuple[str, float]:
        """(best language, its probability)."""
        s = self.score_vector(text)
        i = int(s.argmax())
        return self.labels[i], float(s[i])


class LanguageFilter(Filter):
    """Keep documents in the wanted languages; record language and score in metadata."""

    name = "language"

    def __init__(self, cfg: LanguageConfig | None = None):
        self.cfg = cfg or LanguageConfig()
        self.identifier = LanguageIdentifier()
        known = set(self.identifier.labels)
        unknown = [lang for lang in self.cfg.languages if lang not in known]
        if unknown:
            raise ConfigError(f"language.languages: unknown language code(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        self._wanted = np.array(sorted({i for i, lab in enumerate(self.identifier.labels)
                                        if lab in set(self.cfg.languages)}), dtype=np.int64)

    def check(self, doc: Document) -> str | None:
        scores = self.identifier.score_vector(doc.text)
        best = int(scores.argmax())
        lang, score = self.identifier.labels[best], float(scores[best])
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if not self.cfg.languages:
            return None if score >= self.cfg.threshold else "low_score"
        if float(scores[self._wanted].max()) >= self.cfg.threshold:
            return None
        return "wrong_language" if lang not in self.cfg.languages else "low_score"

    def process(self, doc: Document) -> Item:
        reason = self.check(doc)
        if reason is None:
            return doc
        return Removal(doc.id, self.name, reason,
                       detail=f"{doc.metadata['language']} {doc.metadata['language_score']:.3f}")
