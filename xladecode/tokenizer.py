"""GPT-2 byte-level BPE tokenizer with left padding for batched decoding.

Why decoder-only models pad on the LEFT
---------------------------------------
A decoder-only model (GPT-2 and friends) generates the next token from the
hidden state at the *last* position of each row. If a batch of prompts of
different lengths were right-padded, the last position of a short prompt
would be a pad token, and every row would "end" at a different column, so
each step would have to gather a different index per row. Padding on the
left instead right-aligns all prompts::

    [pad pad  The  cat]          mask [0 0 1 1]
    [ To  be   or  not]          mask [1 1 1 1]

Now column ``T - 1`` holds the real final token for every row, and newly
generated tokens are appended at the same column for the whole batch, which
keeps shapes static (a requirement for compiling with XLA). The attention
mask (0 = pad) tells the model to ignore the pad positions; position ids
must then be derived from the mask (e.g. ``cumsum(mask) - 1``) so that the
first real token of every row gets position 0.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as _HFTokenizer

from .files import read_bytes, read_json_object, short_repr

EOS_TOKEN = "<|endoftext|>"

#: Largest tokenizer file we read: GPT-2's tokenizer.json is 1.4 MB, the
#: largest vocabularies' are ~35 MB.
MAX_TOKENIZER_BYTES = 256 << 20


def _utf8_text(path) -> str:
    """A tokenizer file's text: a regular file of at most MAX_TOKENIZER_BYTES, valid UTF-8."""
    try:
        return read_bytes(path, MAX_TOKENIZER_BYTES).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid UTF-8 ({error.reason} at byte {error.start})") from None


def _check_merges(path, text: str) -> None:
    """The rule ``tokenizers`` applies to merges.txt, checked first to name the
    real line: every line but ``#version`` ones is two tokens and one space."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if not line.startswith("#version") and len(line.split(" ")) != 2:
            raise ValueError(f"{path}: line {number} must be two tokens separated by one space, "
                             f"got {short_repr(line)}")


class Tokenizer:
    """Thin wrapper around a ``tokenizers.Tokenizer`` holding GPT-2 BPE."""

    def __init__(self, tokenizer: _HFTokenizer):
        self._tok = tokenizer

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_vocab_merges(cls, vocab_path, merges_path) -> "Tokenizer":
        """Builds GPT-2 byte-level BPE from ``vocab.json`` + ``merges.txt``.

        Raises:
          ValueError: naming the file: vocab.json is not a JSON object of
            token -> id, or merges.txt is not valid UTF-8 / BPE merges for it.
        """
        vocab = read_json_object(vocab_path, MAX_TOKENIZER_BYTES)
        for token, token_id in vocab.items():
            if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < 2**31:
                raise ValueError(f"{vocab_path}: the id of token {short_repr(token)} must be an "
                                 f"int in [0, 2**31), got {short_repr(token_id)}")
        _check_merges(merges_path, _utf8_text(merges_path))
        try:
            model = models.BPE.from_file(os.fspath(vocab_path), os.fspath(merges_path))
        except Exception as error:  # tokenizers raises plain Exception for every problem
            raise ValueError(f"{merges_path}: not valid BPE merges for {vocab_path}: {error}") from None
        tok = _HFTokenizer(model)
        # GPT-2 does not prepend a space to the first word: "TensorFlow" -> "T", ...
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        # Already in the vocab (id 50256); registering it as special makes the
        # literal text "<|endoftext|>" encode to that single id.
        tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True)])
        return cls(tok)

    @classmethod
    def from_tokenizer_json(cls, path) -> "Tokenizer":
        """Loads a ``tokenizer.json`` (the ``tokenizers`` library's own format).

        Raises:
          ValueError: naming the file, if it is not a valid tokenizer.json.
        """
        text = _utf8_text(path)
        try:
            return cls(_HFTokenizer.from_str(text))
        except Exception as error:  # tokenizers raises plain Exception for every problem
            raise ValueError(f"{path}: not a valid tokenizer.json: {error}") from None

    @classmethod
    def from_folder(cls, path) -> "Tokenizer":
        """Loads ``tokenizer.json``, else ``vocab.json`` + ``merges.txt``.

        Raises:
          FileNotFoundError: neither is there.
          ValueError: naming the file, if the one found is corrupt.
        """
        folder = os.fspath(path)
        tok_json = os.path.join(folder, "tokenizer.json")
        vocab = os.path.join(folder, "vocab.json")
        merges = os.path.join(folder, "merges.txt")
        for path in (tok_json, vocab, merges):
            if os.path.islink(path) and not os.path.exists(path):  # not "absent": broken
                raise ValueError(f"{path} is a symlink to a missing file")
        if os.path.lexists(tok_json):
            return cls.from_tokenizer_json(tok_json)
        if os.path.lexists(vocab) and os.path.lexists(merges):
            return cls.from_vocab_merges(vocab, merges)
        raise FileNotFoundError(
            f"no tokenizer in {folder!r}: looked for 'tokenizer.json' or "
            "'vocab.json' + 'merges.txt'")

    def save_tokenizer_json(self, path) -> None:
        """Writes the full tokenizer (model, pre-tokenizer, decoder) as JSON."""
        self._tok.save(os.fspath(path), pretty=False)

    # --------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (50257 for GPT-2)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int | None:
        """Id of ``<|endoftext|>`` (50256 for GPT-2), or None if absent."""
        return self._tok.token_to_id(EOS_TOKEN)

    # ----------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """Encodes one string to token ids (no BOS/EOS are added)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, pad_token_id: int,
                     pad_to_multiple_of: int | None = None):
        """Encodes strings into a LEFT-padded batch.

        Returns:
          input_ids: np.int32 [batch, T], ``pad_token_id`` in the padding.
          attention_mask: np.int32 [batch, T], 0 for pads and 1 for tokens.
          T is the longest row, rounded up to a multiple of
          ``pad_to_multiple_of`` if given. An empty string gives a row of
          pads with an all-zero mask (callers decide whether that is valid).
        """
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        rows = [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
        T = max((len(r) for r in rows), default=0)
        if pad_to_multiple_of:
            T = -(-T // pad_to_multiple_of) * pad_to_multiple_of  # ceil to multiple
        input_ids = np.full((len(rows), T), pad_token_id, dtype=np.int32)
        attention_mask = np.zeros((len(rows), T), dtype=np.int32)
        for i, r in enumerate(rows):
            if r:  # guard: a[-0:] would select the whole row
                input_ids[i, T - len(r):] = r
                attention_mask[i, T - len(r):] = 1
        return input_ids, attention_mask

    # ----------------------------------------------------------------- decoding
    @staticmethod
    def _keep(ids, mask, skip_ids: Iterable[int]) -> list[int]:
        """Drops positions with mask 0 and ids in ``skip_ids``."""
        ids = np.asarray(ids).reshape(-1)
        keep = ~np.isin(ids, np.fromiter(skip_ids, dtype=np.int64))
        if mask is not None:
            keep &= np.asarray(mask).reshape(-1) != 0
        return ids[keep].tolist()

    def decode(self, ids, attention_mask=None, skip_ids: Iterable[int] = ()) -> str:
        """Decodes one row of ids ([T], any int dtype) to a string.

        Positions where ``attention_mask`` is 0 and ids listed in ``skip_ids``
        are removed first; everything else (``<|endoftext|>`` included) is
        decoded verbatim.
        """
        kept = self._keep(ids, attention_mask, tuple(skip_ids))
        return self._tok.decode(kept, skip_special_tokens=False)

    def decode_batch(self, ids_2d, attention_mask=None,
                     skip_ids: Iterable[int] = ()) -> list[str]:
        """Decodes ``ids_2d`` [batch, T] (optional mask [batch, T]) row by row."""
        skip_ids = tuple(skip_ids)
        ids_2d = np.asarray(ids_2d)
        masks = [None] * len(ids_2d) if attention_mask is None else np.asarray(attention_mask)
        rows = [self._keep(r, m, skip_ids) for r, m in zip(ids_2d, masks)]
        return self._tok.decode_batch(rows, skip_special_tokens=False)

    # ------------------------------------------------------------ token bytes
    def token_bytes(self) -> list[bytes]:
        """The bytes each id decodes to, for all ``vocab_size`` ids (stop strings need them).

        A byte-level BPE token (GPT-2) is a string of stand-in characters, one
        per byte (:func:`byte_level_alphabet`); mapping them back gives the
        token's exact bytes, even when it holds only part of a multi-byte
        UTF-8 character (which ``decode`` would turn into U+FFFD). Added
        tokens such as ``<|endoftext|>`` are their text in UTF-8; so is every
        token of a tokenizer without a byte-level decoder.

        Returns:
          list of ``vocab_size`` ``bytes``; an id with no token gives ``b""``.
          Computed once per tokenizer (~0.4 s for GPT-2), then cached.
        """
        cached = getattr(self, "_token_bytes", None)
        if cached is not None:
            return list(cached)
        byte_of = {char: byte for byte, char in enumerate(byte_level_alphabet())}
        byte_level = isinstance(self._tok.decoder, decoders.ByteLevel)
        out = []
        for token_id in range(self.vocab_size):
            token = self._tok.id_to_token(token_id)
            if token is None:
                out.append(b"")
            elif byte_level and all(char in byte_of for char in token):
                out.append(bytes(byte_of[char] for char in token))
            else:
                out.append(self._tok.decode([token_id], skip_special_tokens=False).encode("utf-8"))
        self._token_bytes = tuple(out)
        return out


def byte_level_alphabet() -> list[str]:
    """GPT-2's stand-in character for each byte 0..255 (index = byte value).

    Byte-level BPE works on text where every byte is one printable character:
    the 188 bytes that already print as a visible Latin-1 character stand for
    themselves, and the others (control bytes, space, ...) are moved, in
    order, to the characters from U+0100 on -- which is why a space shows up
    as ``Ġ`` (U+0120) and a newline as ``Ċ`` in the vocabulary.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, moved = [], 0
    for byte in range(256):
        if byte in visible:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + moved))
            moved += 1
    return alphabet
