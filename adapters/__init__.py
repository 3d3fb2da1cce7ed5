"""LoRA adapters on shared base models: what an adapter is (:mod:`adapters.spec`) and which
resident adapter an engine at its bound gives up (:mod:`adapters.residency`).

The gateway registers adapters from its settings, lists them in ``/v1/models``, and loads
each on demand onto an engine serving its base (``/v1/load_lora_adapter``), keeping every
engine within its adapter bound (see ``gateway/pipeline/adapters.py``). Nothing here does
I/O: these are the rules the gateway applies.
"""

from adapters.residency import Resident, victim
from adapters.spec import AdapterSpec, under_roots

__all__ = ["AdapterSpec", "Resident", "under_roots", "victim"]
