"""megatron_meml: MEML-GRPO on megatron-core.

Library packages: ``stages`` (MEF, RIEL sync / async, evaluation, the driver), ``algo`` (the objective in plain
torch), ``rollout`` (engines behind ``rollout.api``, the RIEL step's scheduler), ``data``, ``rewards``, ``eval``,
``config`` (the one dataclass tree), ``backend`` (everything megatron-core, in rooms), ``planning``.

Commands (``python -m megatron_meml.<cmd>``): ``train``, ``convert_hf``, ``plan_scaling``, ``scaling_study``,
``ablate``, ``launch``, ``prepare_data``, ``build_mef_data``, ``pretokenize``, ``collect_teacher_traces``,
``verifier_audit``, ``expert_overlap``; benchmarks ``bench.<name>`` and GPU checks ``gpu.<name>``.
See docs/architecture.md.
"""
__version__ = "0.1.0"
