"""`torchtext.vocab.Vocab` / `vocab()` / `build_vocab_from_iterator()` in Python (see the package text)."""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Iterable

import torch


class _Store:
    """What torchtext's compiled `Vocab` holds: the index -> token list and an optional default index."""

    def __init__(self, tokens: list[str]):
        self.itos = list(tokens)
        self.stoi = {token: index for index, token in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise RuntimeError("tokens of a vocabulary must be unique")
        self.default_index = None

    def __getstate__(self):
        return {"itos": self.itos, "default_index": self.default_index}

    def __setstate__(self, state):
        self.__init__(state["itos"])
        self.default_index = state["default_index"]


class Vocab(torch.nn.Module):
    def __init__(self, vocab: _Store):
        super().__init__()
        self.vocab = vocab

    def __len__(self) -> int:
        return len(self.vocab.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.vocab.stoi

    def __getitem__(self, token: str) -> int:
        index = self.vocab.stoi.get(token)
        if index is not None:
            return index
        if self.vocab.default_index is None:
            raise RuntimeError(f"Token {token} not found and default index is not set")
        return self.vocab.default_index

    def forward(self, tokens: list[str]) -> list[int]:
        return self.lookup_indices(tokens)

    def set_default_index(self, index: int | None) -> None:
        self.vocab.default_index = index

    def get_default_index(self) -> int | None:
        return self.vocab.default_index

    def insert_token(self, token: str, index: int) -> None:
        if token in self.vocab.stoi:
            raise RuntimeError(f"Token {token} already exists in the Vocab with index: {self.vocab.stoi[token]}")
        if not 0 <= index <= len(self):
            raise RuntimeError(f"Specified index {index} is out of bounds for vocab of size {len(self)}")
        itos = self.vocab.itos[:index] + [token] + self.vocab.itos[index:]
        default = self.vocab.default_index
        self.vocab.__init__(itos)
        self.vocab.default_index = default

    def append_token(self, token: str) -> None:
        self.insert_token(token, len(self))

    def lookup_token(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise RuntimeError(f"Specified index {index} is out of bounds for vocab of size {len(self)}")
        return self.vocab.itos[index]

    def lookup_tokens(self, indices: list[int]) -> list[str]:
        return [self.lookup_token(i) for i in indices]

    def lookup_indices(self, tokens: list[str]) -> list[int]:
        return [self[token] for token in tokens]

    def get_stoi(self) -> dict[str, int]:
        return dict(self.vocab.stoi)

    def get_itos(self) -> list[str]:
        return list(self.vocab.itos)


def vocab(ordered_dict: dict, min_freq: int = 1, specials: list[str] | None = None,
          special_first: bool = True) -> Vocab:
    """Tokens of `ordered_dict` (token -> frequency) seen at least `min_freq` times, in its order."""
    specials = list(specials or [])
    tokens = [t for t, freq in ordered_dict.items() if freq >= min_freq and t not in specials]
    return Vocab(_Store(specials + tokens if special_first else tokens + specials))


def build_vocab_from_iterator(iterator: Iterable, min_freq: int = 1, specials: list[str] | None = None,
                              special_first: bool = True, max_tokens: int | None = None) -> Vocab:
    counter = Counter()
    for tokens in iterator:
        counter.update(tokens)
    ordered = sorted(counter.items(), key=lambda x: x[0])
    ordered.sort(key=lambda x: x[1], reverse=True)
    if max_tokens is not None:
        ordered = ordered[: max_tokens - len(specials or [])]
    return vocab(OrderedDict(ordered), min_freq=min_freq, specials=specials, special_first=special_first)
