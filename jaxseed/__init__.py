"""jaxseed: what a random seed really controls.

Every random draw of a training run comes from a named key stream (``init``,
``shuffle``, ``dropout``, ``augment``, ``latent``, ``sample``, and your own); a
draw is a pure function of the stream's root key and its position. For your own
loop: ``Seeds`` (a seed per stream), ``epoch_order``, ``example_keys``,
``step_key``, ``named_key``, ``layer_rngs`` (see ``jaxseed.streams``). To study your own
training function: ``study`` and ``Result`` (``fingerprint`` hashes its final parameters). To
train and study with jaxseed's loop: ``jaxseed.api.train`` and ``jaxseed.api.ablate``.
"""

from jaxseed.manifest import tree_hash as fingerprint
from jaxseed.streams import Seeds, epoch_order, example_keys, layer_rngs, named_key, step_key
from jaxseed import study  # a package that is also callable: jaxseed.study(train, ...)
from jaxseed.study import Result

__all__ = ["Result", "Seeds", "epoch_order", "example_keys", "fingerprint", "layer_rngs", "named_key", "step_key",
           "study"]
