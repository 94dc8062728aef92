"""Case: Hugging Face ``tokenizers`` batch encoding before the fork, three ways.

The batch runs on a Rayon thread pool, whose threads a child would not have.
tokenizers registers a pthread_atfork handler: when TOKENIZERS_PARALLELISM is
*unset*, it turns parallelism off in the child (with a warning) and the child
works single-threaded; when it is set to true, parallelism stays on and the
child's next batch waits for threads that do not exist (HANG); when it is set
to false, no pool is made at all. The tokenizer is built in memory (no download).

WARNING: importing this module may start the Rayon pool (on purpose).
"""

from tokenizers import Tokenizer, models, pre_tokenizers

VOCAB = {"[UNK]": 0, "fork": 1, "safety": 2, "check": 3}
tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
TEXTS = ["fork safety check"] * 2000
WARM = len(tokenizer.encode_batch(TEXTS))


def use() -> int:
    """Encode the batch again in the child; return the number of encodings."""
    return len(tokenizer.encode_batch(TEXTS))
