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
* ``sampling.py``    stateless counter-based RNG and Gumbel-max sampling
* ``lm.py``          ``load`` / ``LanguageModel`` / ``GenerateOutput``
"""

from .lm import GenerateOutput, LanguageModel, default_model_path, load
from .protocol import DecoderModel
from .tokenizer import Tokenizer

__all__ = ["load", "LanguageModel", "GenerateOutput", "DecoderModel", "Tokenizer", "default_model_path"]
__version__ = "0.1.0"
