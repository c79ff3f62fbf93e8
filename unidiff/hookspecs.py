"""The hooks a unidiff plugin may implement.

Each hook receives a `register` callback (the style of simonw/llm): a plugin calls it once per thing it provides.
Names are global across plugins: a name that another plugin already holds (built-ins register first) is ignored and
reported, naming both plugins. A registration of the wrong type (no name, ``None`` or a non-callable factory, a
modality class whose ``vocab_size`` is not a positive int) is refused and reported, and a hook that raises registers
nothing; either way the plugin is listed as broken by ``unidiff plugins`` and every other plugin keeps working.
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
