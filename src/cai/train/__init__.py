"""Training helpers shared by the ``sft``, ``reward`` and ``dpo`` stages (TRL on CPU or GPU).

Heavy libraries (torch, transformers, TRL, PEFT) are imported inside functions, so importing this package is cheap.
"""
