"""Which pip extra installs a module that is missing: the backends' client libraries (as the
registry lists them, third-party backends included) and the other optional dependencies.

Every place that imports a user's dotted path (marun settings, ``--backend``, the contract
commands) adds :func:`install_hint` to its error, so a missing ``redis`` says
``pip install 'microagent[redis]'`` whichever path led to it.
"""
from __future__ import annotations

from microagent.backends import all_backends, pip_hint

__all__ = ['OTHER_EXTRAS', 'extra_for', 'install_hint']

#: the extras that install no backend: top-level module -> extra
OTHER_EXTRAS: dict[str, str] = {
    'prometheus_client': 'prometheus',  # microagent.ops.metrics, /metrics
    'opentelemetry': 'otel',  # microagent.ops.tracing
    'watchfiles': 'reload',  # marun --reload
    'pydantic': 'pydantic',  # pydantic payload models
}


def extra_for(module: str | None) -> str | None:
    """The extra whose install provides ``module`` (a dotted name: its top level counts), if any."""
    if not module:
        return None
    top = module.partition('.')[0]
    for backend in all_backends():
        if backend.extra and top in backend.modules:
            return backend.extra
    return OTHER_EXTRAS.get(top)


def install_hint(exc: ImportError) -> str:
    """``": pip install 'microagent[redis]'"`` when what ``exc`` misses comes with an extra, else ''."""
    return pip_hint(extra_for(exc.name))
