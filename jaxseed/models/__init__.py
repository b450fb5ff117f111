"""The built-in models, one module each, holding the model and its ``OBJECTIVE``.

Adding a built-in model is adding a module here: ``objective.resolve`` finds it by
its file name (``--model NAME``). Nothing here is imported until a model is asked for.
"""
