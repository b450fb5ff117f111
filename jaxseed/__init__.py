"""jaxseed: what a random seed really controls.

Every random draw of a training run comes from one of five named key streams
(``init``, ``shuffle``, ``dropout``, ``augment``, ``latent``); see ``jaxseed.streams``.
"""
