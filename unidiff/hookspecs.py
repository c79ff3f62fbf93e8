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


@hookspec
def register_architectures(register):
    """Register denoiser backbones: ``register(name, build, config=ConfigClass)``; ``[model] architecture = name``
    picks one, ``build(cfg, layout, heads, grids)`` returns it (see `unidiff.models.architectures`)."""


@hookspec
def register_schedules(register):
    """Register masking schedules: ``register(name, factory)``; ``factory(**params)`` returns a
    `unidiff.process.schedules.Schedule`, named by spec strings such as ``name:key=value``."""


@hookspec
def register_processes(register):
    """Register noise processes: ``register(name, factory)``; ``factory()`` returns a `unidiff.process.Process`
    (corruption, ELBO terms, reverse-step budgets and posterior), picked by ``[train] process = name``."""


@hookspec
def register_commands(register):
    """Register ``unidiff`` subcommands: ``register("text frontier", "module:function", help=...)`` (one or two
    words); ``function(argv, prog)`` runs it, imported only when the command is run."""
