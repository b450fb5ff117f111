"""jaxseed: what a random seed really controls.

Every random draw of a training run comes from a named key stream (``init``,
``shuffle``, ``dropout``, ``augment``, ``latent``, ``sample``, and any an objective declares);
see ``jaxseed.streams``. From Python: ``jaxseed.api.train`` and ``jaxseed.api.ablate``
with an ``jaxseed.objective.Objective`` or a built-in model's name.
"""
