"""xladecode: autoregressive text generation whose whole decoding loop is one XLA graph.

Start here::

    import xladecode
    lm = xladecode.load()                       # the shipped default model
    print(lm.generate_text(["ROMEO:"], max_new_tokens=40)[0])

Where things live:

* ``gpt2.py``        GPT-2 in plain TensorFlow, HF weight names in plain sight
* ``kv_cache.py``    the preallocated fixed-size KV cache
* ``positions.py``   padding-aware position ids and attention masks
* ``protocol.py``    the model <-> decoder interface
* ``decoding.py``    greedy / sampling ``tf.while_loop``
* ``beam_search.py`` beam search with masked finished beams
* ``processors.py``  logits processors and sampling warpers
* ``sequence_bias.py``, ``truncation.py``  sequence bias; min-p / typical / epsilon / eta, renormalisation
* ``sampling.py``    stateless counter-based RNG and Gumbel-max sampling
* ``options.py``     every decoding option, defined once (``GenerationOptions``)
* ``plan.py``        the one shape rule and the one place filler rows are made
* ``request.py``     a call -> validated arrays, option tensors, compile key
* ``compiled.py``    ``build_generate``, ``Strategy``, the compiled-function cache
* ``placement.py``   where decoding runs (one device, a tf.distribute strategy)
* ``lm.py``          ``load`` / ``LanguageModel`` / ``GenerateOutput``: a thin facade
* ``streaming.py``   ``lm.stream`` / ``lm.stream_text``: the compiled loop paused every chunk
* ``checkpoint.py``  checkpoint folders; ``safetensors_file.py`` the validated reader;
  ``files.py`` regular files, bounded sizes, strict JSON
* ``batch.py``, ``jsonl.py``, ``export.py``, ``distribute.py``, ``bench.py``, ``cli.py``  entry points

The public names are imported on first use (PEP 562 module ``__getattr__``):
``import xladecode`` alone does not import TensorFlow, so the ``xladecode``
command answers ``--help`` and argument errors at once.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__all__ = ["load", "LanguageModel", "GenerateOutput", "DecoderModel", "Tokenizer", "default_model_path"]
__version__ = "0.1.0"

# public name -> the module that defines it
_HOME = {"load": "lm", "LanguageModel": "lm", "GenerateOutput": "lm", "default_model_path": "lm",
         "DecoderModel": "protocol", "Tokenizer": "tokenizer"}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ does this on first use
    from .lm import GenerateOutput, LanguageModel, default_model_path, load
    from .protocol import DecoderModel
    from .tokenizer import Tokenizer


def __getattr__(name: str):
    """``xladecode.load`` etc.: imports the defining module on first use.

    Submodules (``xladecode.batch``, ...) resolve too, as they did when this
    file imported them eagerly.
    """
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
