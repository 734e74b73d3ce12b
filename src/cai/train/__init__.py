"""Training shared by the ``sft``, ``reward``, ``dpo`` and ``rl`` stages (TRL, or the own PPO loop, on CPU or GPU).

Heavy libraries (torch, transformers, TRL, PEFT) are imported inside functions, so importing this package is cheap.
"""
