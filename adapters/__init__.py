"""LoRA adapters: registry and placement on engines.

Today engines load adapters at run time through vLLM's ``/v1/load_lora_adapter`` and the
gateway discovers them from each engine's ``/v1/models``; the adapter registry and
LoRA-aware placement build on that.
"""
