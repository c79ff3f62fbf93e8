"""The hooks a unidiff plugin may implement.

Each hook receives a `register` callback (the style of simonw/llm): a plugin calls it once per thing it provides.
Names are global across plugins; registering a name twice is an error that names both plugins.
"""

import pluggy

hookspec = pluggy.HookspecMarker("unidiff")
hookimpl = pluggy.HookimplMarker("unidiff")


@hookspec
def register_modalities(register):
    """Register modality factories: ``register(name, factory)``; ``factory(**options)`` returns a Modality."""


@hookspec
def register_datasets(register):
    """Register datasets: ``register(name, builder, modality=...)``; ``builder(split)`` returns a list of contents."""


@hookspec
def register_models(register):
    """Register shipped model folders by name: ``register(name, path)``."""


@hookspec
def register_policies(register):
    """Register unmasking policies: ``register(name, factory)``; ``factory(**options)`` returns a `Policy`."""
